"""The KAN layer: exact basis (against SciPy), fast path == reference, grid update, init, memory."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import outputs_and_grads
from scipy.interpolate import BSpline

from kan_engine import fused_basis, spline_gather
from kan_engine import kan as kan_module
from kan_engine.basis import local_dense
from kan_engine.bspline import reference_basis
from kan_engine.kan import KANLinear
from kan_engine.memory_peak import TensorMemoryPeak

torch.set_num_threads(1)
needs_kernels = pytest.mark.skipif(
    not fused_basis.runnable(torch.device("cpu")), reason="needs Triton (its CPU interpreter)"
)
FUSED = pytest.param(True, marks=needs_kernels)


@pytest.fixture(autouse=True)
def _few_kernel_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter runs a kernel's programs one after another: 8-row tiles here (the
    GPU's 1-row tiles have no row mask to test) make the fused tests about 4x faster."""
    monkeypatch.setattr(fused_basis, "BLOCK_N", 8)


SAMPLERS: dict[str, Callable[[torch.Generator, int, int], torch.Tensor]] = {
    "uniform": lambda g, n, i: torch.rand(n, i, generator=g) * 2 - 1,
    "skewed": lambda g, n, i: torch.rand(n, i, generator=g) ** 3 * 2 - 1,
    "clustered": lambda g, n, i: torch.where(
        torch.rand(n, i, generator=g) < 0.7,
        -0.5 + 0.05 * torch.randn(n, i, generator=g),
        0.6 + 0.1 * torch.randn(n, i, generator=g),
    ),
    "normal": lambda g, n, i: 0.5 * torch.randn(n, i, generator=g),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_layer(in_f: int, out_f: int, seed: int = 0, **kw: object) -> KANLinear:
    """A layer whose edges are smooth non-linear functions, like a trained one."""
    torch.manual_seed(seed)
    layer = KANLinear(in_f, out_f, **kw)  # type: ignore[arg-type]
    g = layer.greville().t()  # (G+k, in)
    a, b, c = torch.randn(3, out_f, 1, in_f, dtype=g.dtype) / 4
    with torch.no_grad():
        layer.spline_weight.copy_(a * g + b * g**2 + c * torch.sin(3 * g))  # (out, G+k, in)
    return layer


def rough_layer(in_f: int, out_f: int, seed: int = 0, **kw: object) -> KANLinear:
    """A layer with white-noise spline coefficients: the hardest case for any refit."""
    torch.manual_seed(seed)
    layer = KANLinear(in_f, out_f, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.spline_weight.normal_(0, 1.0)
    return layer


def scipy_basis(knots: np.ndarray, order: int, x: np.ndarray) -> np.ndarray:
    """(N, G+k) basis values of one input from SciPy's basis_element, zero outside support."""
    cols = []
    for j in range(len(knots) - order - 1):
        element = BSpline.basis_element(knots[j : j + order + 2], extrapolate=False)
        cols.append(np.nan_to_num(element(x), nan=0.0))
    return np.stack(cols, axis=1)


def updated(layer: KANLinear, sampler: str = "skewed", n: int = 256) -> KANLinear:
    layer.update_grid(SAMPLERS[sampler](gen(5), n, layer.in_features).to(layer.grid.dtype))
    return layer


# ---------------------------------------------------------------------------------------------
# the basis


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("grid", ["uniform", "updated"])
def test_basis_matches_scipy(order: int, grid: str) -> None:
    layer = KANLinear(3, 2, grid_size=6, spline_order=order, dtype=torch.float64)
    if grid == "updated":
        updated(layer)
    x = torch.rand(400, 3, generator=gen(1), dtype=torch.float64) * 5 - 2.5  # beyond the grid
    ours = layer.b_splines(x)  # (N, in, G+k)
    fast = local_dense(x, layer.grid, order, layer._uniform)  # the fast path's local scheme
    assert ours.shape == (400, 3, 6 + order)
    for i in range(3):
        expected = scipy_basis(layer.grid[i].numpy(), order, x[:, i].numpy())
        np.testing.assert_allclose(ours[:, i].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(fast[:, i].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_basis_is_a_partition_of_unity_inside_the_grid(order: int) -> None:
    layer = KANLinear(4, 2, grid_size=5, spline_order=order, grid_range=(-2.0, 3.0))
    x = torch.rand(1000, 4, generator=gen(2)) * 5 - 2  # inside [-2, 3)
    sums = layer.b_splines(x).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-6, rtol=0)
    outside = torch.full((5, 4), 3.5)
    assert float(layer.b_splines(outside).sum(-1).max()) < 1.0 - 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knots_are_in_the_layer_dtype(dtype: torch.dtype) -> None:
    layer = KANLinear(3, 2, dtype=dtype)
    assert layer.grid.dtype == dtype
    assert layer.b_splines(torch.zeros(2, 3, dtype=dtype)).dtype == dtype
    updated(layer)
    assert layer.grid.dtype == dtype


# ---------------------------------------------------------------------------------------------
# the fast path against the textbook reference


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("grid", ["uniform", "updated"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_fast_path_equals_reference(order: int, grid: str, dtype: torch.dtype, fused: bool) -> None:
    """Both fast paths: the eager local scheme and the Triton kernels of `fused_basis` (run by
    Triton's interpreter here, compiled on a GPU)."""
    layer = rough_layer(
        6, 5, grid_size=5, spline_order=order, scale_base=2.5, scale_spline=0.7, dtype=dtype
    )
    layer.fused = fused
    if grid == "updated":
        updated(layer)
        assert not layer._uniform
    x = torch.randn(2, 9, 6, generator=gen(3), dtype=dtype) * 1.5  # (..., in), some outside
    x[0, 0, 0], x[1, 1, 1] = 40.0, -40.0  # beyond the extended grid
    fast = outputs_and_grads(layer, x, fast=True)
    ref = outputs_and_grads(layer, x, fast=False)
    assert fast[0].shape == (2, 9, 5)
    for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), fast, ref, strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=name)
        else:
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5, msg=name)


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_chunked_forward_and_backward_equal_unchunked(fused: bool) -> None:
    layer = rough_layer(6, 4, dtype=torch.float64)
    layer.fused = fused
    updated(layer)
    x = torch.randn(37, 6, generator=gen(4), dtype=torch.float64)
    whole = outputs_and_grads(layer, x, fast=True)
    layer.chunk_size = 8
    chunked = outputs_and_grads(layer, x, fast=True)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_without_chunk_size_rows_are_chunked_to_the_basis_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big batch never builds a basis buffer over `BASIS_BUDGET_BYTES` (here 10 rows' worth)."""
    layer = rough_layer(6, 4, dtype=torch.float64)
    x = torch.randn(37, 6, generator=gen(4), dtype=torch.float64)
    whole = outputs_and_grads(layer, x, fast=True)
    row_bytes = (5 + 3 * 3) * 6 * 8  # the padded (G+3k, in) float64 row of the local scheme
    monkeypatch.setattr(kan_module, "BASIS_BUDGET_BYTES", 10 * row_bytes)
    with TensorMemoryPeak() as chunked_peak:
        chunked = outputs_and_grads(layer, x, fast=True)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    monkeypatch.setattr(kan_module, "BASIS_BUDGET_BYTES", 1000 * row_bytes)
    with TensorMemoryPeak() as whole_peak:
        outputs_and_grads(layer, x, fast=True)
    assert chunked_peak.peak < whole_peak.peak - 20 * row_bytes


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_a_transposed_input_gets_the_reference_gradients(fused: bool) -> None:
    """x a column-major view (a transpose upstream): the backward writes row slices of dL/dx."""
    layer = rough_layer(6, 4, dtype=torch.float64)
    layer.fused = fused
    x = torch.randn(6, 37, generator=gen(5), dtype=torch.float64).t()  # (37, 6), not contiguous
    layer.chunk_size = 16
    fast = outputs_and_grads(layer, x, fast=True)
    ref = outputs_and_grads(layer, x, fast=False)
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
@pytest.mark.parametrize("scale_base", [1.0, 2.5])
def test_fast_path_is_exactly_the_same_for_any_batch_layout(fused: bool, scale_base: float) -> None:
    """The host-time shortcuts of the fast path (an (N, in) batch is not reshaped, a scale of 1
    is not multiplied, a single chunk is not sliced, regularisation statistics on or off) keep
    the arithmetic: a (2, 9, in) batch and its (18, in) view give bit-equal outputs and
    gradients, run after run."""
    layer = rough_layer(6, 5, scale_base=scale_base, scale_spline=scale_base, dtype=torch.float64)
    layer.fused = fused
    x = torch.randn(2, 9, 6, generator=gen(3), dtype=torch.float64) * 1.5
    first = outputs_and_grads(layer, x, fast=True)
    layer.track_regularization = True
    runs = [outputs_and_grads(layer, x, fast=True), outputs_and_grads(layer, x.view(18, 6), True)]
    for run in runs:
        for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), first, run, strict=True):
            assert torch.equal(a.reshape(b.shape), b), name


@needs_kernels
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_kernels_on_many_tiles_and_a_fine_grid_equal_the_reference(out_dtype: torch.dtype) -> None:
    """Rows and inputs over several kernel tiles (with ragged edges), a 40-interval refit grid
    (six binary-search steps), values on and beyond the knots; the basis stored in the matmul
    dtype, the input gradient read back from it."""
    n, n_in = 2 * fused_basis.BLOCK_N + 3, fused_basis.BLOCK_I + 7
    layer = updated(KANLinear(n_in, 2, grid_size=40, spline_order=3, dtype=torch.float64), n=512)
    grid = layer.grid
    x = torch.randn(n, n_in, generator=gen(8), dtype=torch.float64)
    x[0], x[1], x[2, :9] = grid[:, 0], grid[:, 17], 50.0  # first knot, an inner knot, outside
    basis = fused_basis.dense_basis(x, grid, 3, out_dtype)
    expected = reference_basis(x, grid, 3).transpose(1, 2)  # (N, G+k, in)
    storage = 1e-7 if out_dtype == torch.float32 else 4e-3  # rounding float64 values on store
    torch.testing.assert_close(basis.double(), expected, atol=storage, rtol=0)
    # dL/dB arrives in the matmul dtype; the reference gets the same rounded values.
    grad_basis = torch.randn(expected.shape, generator=gen(9), dtype=torch.float64).to(out_dtype)
    xr = x.clone().requires_grad_(True)
    (reference_basis(xr, grid, 3).transpose(1, 2) * grad_basis.double()).sum().backward()
    got = fused_basis.input_grad(grad_basis, x, grid, 3)
    torch.testing.assert_close(got, xr.grad, atol=1e-9, rtol=1e-9)


def test_fused_kernels_refuse_the_cpu_without_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(fused_basis.INTERPRET_ENV, "0")
    x = torch.rand(3, 4)
    with pytest.raises(RuntimeError, match="need CUDA with Triton"):
        fused_basis.dense_basis(x, KANLinear(4, 2).grid, 3, torch.float32)
    assert not fused_basis.available(torch.device("cpu"))


def test_cpu_autocast_runs_the_fast_path_in_bf16() -> None:
    layer = smooth_layer(16, 8)
    x = torch.rand(32, 16, generator=gen(6)) * 2 - 1
    exact = layer(x)
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xg)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert xg.grad is not None and xg.grad.dtype == torch.float32
    assert layer.spline_weight.grad.dtype == torch.float32
    rel = float((y.detach().float() - exact.detach()).norm() / exact.detach().norm())
    assert rel < 2e-2


# ---------------------------------------------------------------------------------------------
# grid update


def relative_change(layer: KANLinear, x: torch.Tensor) -> float:
    with torch.no_grad():
        before = layer(x)
        layer.update_grid(x)
        after = layer(x)
    return float((after - before).pow(2).mean().sqrt() / before.pow(2).mean().sqrt())


@pytest.mark.parametrize("sampler", ["uniform", "skewed", "clustered", "normal"])
def test_update_grid_keeps_the_function(sampler: str) -> None:
    layer = smooth_layer(16, 8, scale_base=2.5)
    base_before = layer.base_weight.detach().clone()
    grid_before = layer.grid.clone()
    x = SAMPLERS[sampler](gen(7), 512, 16)
    change = relative_change(layer, x)
    print(f"update_grid relative RMS output change ({sampler}): {change:.4f}")
    assert change < 0.05
    assert torch.equal(layer.base_weight, base_before)  # the base branch is untouched
    assert not torch.equal(layer.grid, grid_before)
    assert bool((layer.grid.diff(dim=1) > 0).all())
    # A second update on fresh samples of the same distribution changes little again.
    assert relative_change(layer, SAMPLERS[sampler](gen(8), 512, 16)) < 0.05


def test_update_grid_keeps_linear_edges_exactly() -> None:
    layer = KANLinear(8, 4, init="identity")
    x = SAMPLERS["skewed"](gen(9), 256, 8)
    assert relative_change(layer, x) < 1e-4


def test_update_grid_fits_the_grid_to_the_samples() -> None:
    layer = KANLinear(3, 2, grid_size=4, spline_order=3, grid_eps=0.0)
    x = torch.rand(1001, 3, generator=gen(10)) * 4 + 1  # in [1, 5]: entirely off the old grid
    layer.update_grid(x, margin=0.01)
    k = layer.spline_order
    low, high = layer.grid[:, k], layer.grid[:, -k - 1]
    torch.testing.assert_close(low, x.min(0).values - 0.01)
    torch.testing.assert_close(high, x.max(0).values + 0.01)
    median = layer.grid[:, k + 2]  # grid_eps=0: interior knots are the sample percentiles
    torch.testing.assert_close(median, x.median(0).values, atol=1e-2, rtol=0)
    layer.train()
    layer(x)
    assert layer.outside_grid_share() == 0.0


def test_updated_grid_survives_a_state_dict_round_trip() -> None:
    layer = updated(rough_layer(5, 3))
    fresh = KANLinear(5, 3)
    assert fresh._uniform
    fresh.load_state_dict(layer.state_dict())
    assert not fresh._uniform  # the load hook re-detects the non-uniform grid
    x = torch.randn(10, 5, generator=gen(11))
    torch.testing.assert_close(fresh(x), layer(x))


def test_update_grid_rejects_bad_arguments() -> None:
    layer = KANLinear(3, 2)
    with pytest.raises(ValueError, match="margin"):
        layer.update_grid(torch.zeros(10, 3), margin=0.0)
    with pytest.raises(ValueError, match="samples"):
        layer.update_grid(torch.zeros(1, 3))
    layer.update_grid(torch.zeros(10, 3))  # constant inputs still give increasing knots
    assert bool((layer.grid.diff(dim=1) > 0).all())


# ---------------------------------------------------------------------------------------------
# initialisation


def test_identity_init_makes_every_edge_linear_on_the_grid() -> None:
    layer = KANLinear(5, 4, grid_size=7, grid_range=(-2.0, 2.0), init="identity")
    x = torch.linspace(-2, 2 - 1e-4, 101).unsqueeze(1).expand(-1, 5)  # (N, in) on the grid
    basis = layer.b_splines(x)  # (N, in, G+k)
    phi = torch.einsum("nig,jgi->nji", basis, layer.spline_weight.detach())  # (N, out, in)
    slope = phi[-1] / x[-1]  # (out, in)
    torch.testing.assert_close(phi, slope * x.unsqueeze(1), atol=1e-5, rtol=1e-5)
    assert float(slope.abs().min()) > 0


@pytest.mark.parametrize("init", ["identity", "noise"])
@pytest.mark.parametrize("scale_base", [1.0, 2.5])
def test_init_gives_well_scaled_outputs(init: str, scale_base: float) -> None:
    torch.manual_seed(12)
    layer = KANLinear(256, 256, grid_range=(-2.0, 2.0), scale_base=scale_base, init=init)
    x = torch.randn(2048, 256, generator=gen(13))
    with torch.no_grad():
        std = float(layer(x).std())
    assert 0.6 < std < 1.5, std


def test_invalid_constructor_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="init"):
        KANLinear(3, 2, init="zeros")
    with pytest.raises(ValueError, match="spline_order"):
        KANLinear(3, 2, spline_order=0)
    with pytest.raises(ValueError, match="chunk_size"):
        KANLinear(3, 2, chunk_size=0)


# ---------------------------------------------------------------------------------------------
# monitoring hooks


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_outside_grid_share_counts_the_last_training_forward(fused: bool) -> None:
    """Both routes' statistic: four ops on the local one, inside the basis kernel on the fused
    one (also for a batch that the fused route splits into row chunks)."""
    layer = KANLinear(4, 2, fused=fused)  # grid range [-1, 1)
    assert layer.outside_grid_share() == 0.0
    x = torch.zeros(10, 4)
    x[:3, 0] = 1.5  # 3 of 40 inputs outside
    layer.train()
    layer(x)
    assert layer.outside_grid_share() == pytest.approx(3 / 40)
    layer.eval()
    layer(torch.full((10, 4), 5.0))  # evaluation does not overwrite it
    assert layer.outside_grid_share() == pytest.approx(3 / 40)
    layer.double().train()  # the share stays a float32 buffer, whatever the layer's dtype
    layer(torch.linspace(-1.5, 1.5, 40, dtype=torch.float64).view(10, 4))
    assert layer._outside.dtype == torch.float32
    assert layer.outside_grid_share() == pytest.approx(14 / 40)
    layer.chunk_size = 3
    spread = torch.linspace(-1.5, 1.5, 40, dtype=torch.float64).view(10, 4)
    layer(spread * 0.5)
    assert layer.outside_grid_share() == 0.0
    layer(spread)
    assert layer.outside_grid_share() == pytest.approx(14 / 40)


def exact_edge_magnitudes(layer: KANLinear, x: torch.Tensor) -> torch.Tensor:
    """mean_n |phi_ji(x_ni)| (out, in) by brute force, for checking the cheap bound."""
    base = layer.scale_base * layer.base_weight.unsqueeze(0) * layer.base_activation(x)[:, None]
    spline = torch.einsum("nig,jgi->nji", layer.b_splines(x), layer.spline_weight)
    return (base + layer.scale_spline * spline).abs().mean(0)  # (out, in)


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_regularization_loss_is_the_paper_formula_on_a_cheap_bound(fused: bool) -> None:
    layer = smooth_layer(6, 4, scale_base=2.5, dtype=torch.float64)
    layer.fused = fused
    x = torch.rand(64, 6, generator=gen(14), dtype=torch.float64) * 2 - 1
    with pytest.raises(RuntimeError, match="track_regularization"):
        layer.regularization_loss()
    layer.track_regularization = True
    losses = []
    for fast in (True, False):
        layer.fast = fast
        layer(x)
        losses.append(layer.regularization_loss(activation_weight=0.5, entropy_weight=2.0))
    torch.testing.assert_close(losses[0], losses[1])
    # L1 of the bound >= the exact L1, and equal when every edge keeps one sign on the batch.
    exact = exact_edge_magnitudes(layer, x).detach()
    l1_bound = layer.regularization_loss(activation_weight=1.0, entropy_weight=0.0)
    assert float(l1_bound.detach()) >= float(exact.sum()) - 1e-9
    with torch.no_grad():
        layer.base_weight.abs_()
        layer.spline_weight.abs_()
    layer(x.abs())
    exact = exact_edge_magnitudes(layer, x.abs()).detach()
    p = exact / exact.sum()
    expected = 0.5 * exact.sum() - 2.0 * (p * p.log()).sum()
    got = layer.regularization_loss(activation_weight=0.5, entropy_weight=2.0)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert layer.spline_weight.grad is not None and layer.base_weight.grad is not None


# ---------------------------------------------------------------------------------------------
# memory


def saved_bytes(layer: KANLinear, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward (weights excluded)."""
    params = {p.data_ptr() for p in layer.parameters()} | {layer.grid.data_ptr()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return total


@pytest.mark.parametrize("fused", [False, FUSED], ids=["local", "fused"])
def test_fast_path_keeps_only_order_n_in_activations_for_backward(fused: bool) -> None:
    """Counted per row (the growth from 512 to 1024 rows): a route may also keep weight-sized
    tensors, such as the gathered route's transposed weight or the fused route's joined one,
    which do not grow with the batch."""
    layer = KANLinear(64, 16, grid_size=10, fused=fused)
    per_row = {}
    for fast in (True, False):
        layer.fast = fast
        small, large = (
            saved_bytes(layer, torch.randn(n, 64, generator=gen(15), requires_grad=True))
            for n in (512, 1024)
        )
        per_row[fast] = (large - small) / 512
    assert per_row[True] <= 3 * 64 * 4  # x (twice: SiLU and the spline function) + SiLU(x)
    assert per_row[False] > 10 * per_row[True]


def test_chunking_bounds_the_spline_memory_as_the_batch_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dense route's transient basis (the gathered route builds none: test_spline_gather)."""
    monkeypatch.setenv(spline_gather.ENABLE_ENV, "0")

    def peak(batch: int, chunk: int | None) -> int:
        layer = KANLinear(32, 4, grid_size=20, chunk_size=chunk)
        x = torch.randn(batch, 32, generator=gen(16), requires_grad=True)
        with TensorMemoryPeak() as meter:
            layer(x).sum().backward()
        return meter.peak

    unchunked = peak(4096, None) / peak(512, None)
    chunked = peak(4096, 128) / peak(512, 128)
    assert unchunked > 6  # the batch grew 8x and so did the transient basis
    assert chunked < 2.5  # only the O(N * (in + out)) inputs, outputs and gradients grow
    assert peak(4096, 128) < peak(4096, None) / 5


# ---------------------------------------------------------------------------------------------
# grid update on small batches (the Rapid KAN case: BatchNorm + squash into the grid range)


def relu_norm_batch(seed: int, n: int, in_f: int) -> torch.Tensor:
    """Inputs like a Rapid KAN layer's: ReLU features (a third are zero), normalised with this
    batch's statistics (BatchNorm in training), squashed into (-2, 2) (GridSquash). The ties sit
    at the batch minimum, which moves a little from batch to batch."""
    z = torch.relu(torch.randn(n, in_f, generator=gen(seed)) + 0.45)  # (n, in)
    x = (z - z.mean(0)) / z.std(0)
    return 1.98 * torch.tanh(x / 1.98)


@pytest.mark.parametrize(("keep_range", "limit"), [(False, 0.15), (True, 0.05)])
def test_update_grid_on_a_small_batch_keeps_the_function_beyond_the_batch(
    keep_range: bool, limit: float
) -> None:
    """Outer basis functions barely sampled by 64 rows used to blow up (coefficients ~300): the
    next batches' inputs just below this batch's minimum got outputs off by 400 %, a sweep of the
    grid range by 1700 %. `keep_range` (the trainer's call) keeps the grid over the range."""
    layer = smooth_layer(32, 8, grid_range=(-2.0, 2.0), scale_base=2.5)
    fresh = torch.cat([relu_norm_batch(seed, 64, 32) for seed in range(20, 36)])  # (1024, 32)
    sweep = torch.linspace(-1.98, 1.98, 400).unsqueeze(1).expand(-1, 32).contiguous()  # (400, 32)
    with torch.no_grad():
        before = [layer(fresh), layer(sweep)]
        layer.update_grid(relu_norm_batch(12, 64, 32), keep_range=keep_range)
        after = [layer(fresh), layer(sweep)]
    changes = [float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()) for a, b in
               zip(after, before, strict=True)]  # fmt: skip
    print(f"update_grid on 64 rows: change on fresh rows {changes[0]:.4f}, sweep {changes[1]:.4f}")
    assert changes[0] < limit
    if keep_range:  # without it, one cubic piece spans [-2, batch min]: no match for sin(3x)
        assert changes[1] < limit
    assert float(layer.spline_weight.detach().abs().max()) < 20  # coefficients stay of order one


def test_update_grid_keep_range_never_shrinks_the_grid() -> None:
    k = 3
    narrow = torch.rand(64, 4, generator=gen(14)) - 0.5  # (64, 4) in [-0.5, 0.5]
    shrunk = KANLinear(4, 2, grid_range=(-2.0, 2.0))
    shrunk.update_grid(narrow)
    assert float(shrunk.grid[:, -k - 1].max()) < 0.6  # the default follows the samples
    kept = smooth_layer(4, 2, grid_range=(-2.0, 2.0))
    sweep = torch.linspace(-2, 2, 101).unsqueeze(1).expand(-1, 4).contiguous()  # (101, 4)
    with torch.no_grad():
        before = kept(sweep)
        kept.update_grid(narrow, keep_range=True)
        after = kept(sweep)
    torch.testing.assert_close(kept.grid[:, k], torch.full((4,), -2.0))
    torch.testing.assert_close(kept.grid[:, -k - 1], torch.full((4,), 2.0))
    assert float(kept.grid[:, k + 1].max()) < -0.3  # the interior knots still follow the samples
    # No blow-up; the sparse ends are kept only as far as one cubic piece over [-2, -0.3] can.
    change = (after - before).pow(2).mean().sqrt() / before.pow(2).mean().sqrt()
    assert float(change) < 0.15
    wide = torch.rand(64, 4, generator=gen(15)) * 6 - 3  # (64, 4) in [-3, 3]: the grid grows
    kept.update_grid(wide, keep_range=True)
    torch.testing.assert_close(kept.grid[:, k], wide.min(0).values - 0.01)


def test_update_grid_spreads_knots_over_tied_samples() -> None:
    from kan_engine.grid_refit import MIN_KNOT_GAP

    layer = KANLinear(6, 2, grid_range=(-2.0, 2.0))
    layer.update_grid(relu_norm_batch(16, 256, 6), keep_range=True)
    k, g = layer.spline_order, layer.grid_size
    interior = layer.grid[:, k : k + g + 1]  # (in, G+1)
    step = (interior[:, -1] - interior[:, 0]) / g  # (in,)
    assert bool((interior.diff(dim=1) >= MIN_KNOT_GAP * step[:, None] * (1 - 1e-5)).all())


def test_a_float64_layer_computes_the_same_after_a_state_round_trip() -> None:
    layer = KANLinear(2, 3, grid_size=5).to(torch.float64)  # float32 knots, now float64
    x = torch.rand(50, 2, dtype=torch.float64) * 4 - 2
    again = KANLinear(2, 3, grid_size=5).to(torch.float64)
    again.load_state_dict(layer.state_dict())
    assert torch.equal(again(x), layer(x))

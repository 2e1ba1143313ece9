"""The basis-generating matmuls of `basis_gemm` (Triton's interpreter on the CPU) against the
textbook reference: the layer's output and gradients, its statistics, bf16, many tiles, on
uniform grids (the kernels' closed-form path) and refit ones (search and de Boor)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from kan_engine import basis_gemm, fused_basis
from kan_engine.bspline import reference_basis
from kan_engine.kan import KANLinear

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(
    not fused_basis.runnable(torch.device("cpu")), reason="needs Triton (its CPU interpreter)"
)
N, IN, OUT = 37, 5, 7
GPU_TILES = dict(basis_gemm.TILES)  # before `_small_tiles` replaces them


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles far below the GPU's, so the small shapes here cross several of them with ragged
    edges: 16 rows, 4 outputs, 2 or 1 inputs per K block (G+k padded to 8 or 16); the forward
    split over K in two (its partial-sum path)."""
    tiles = basis_gemm.Tiles(block_n=16, block_o=4, block_k=16, num_warps=4, num_stages=1)
    monkeypatch.setattr(basis_gemm, "TILES", dict.fromkeys(basis_gemm.TILES, tiles))
    monkeypatch.setattr(basis_gemm, "MIN_BLOCK", 1)
    monkeypatch.setattr(basis_gemm, "FORWARD_SPLIT", 2)


def make_layer(grid_size: int, order: int, dtype: torch.dtype, refit: bool) -> KANLinear:
    torch.manual_seed(0)
    layer = KANLinear(
        IN, OUT, grid_size=grid_size, spline_order=order, scale_base=2.5, scale_spline=0.7,
        dtype=dtype, fused=True, basis_gemm=True,
    )  # fmt: skip
    with torch.no_grad():
        layer.spline_weight.normal_()
    if refit:  # skewed samples: a non-uniform grid
        layer.update_grid(torch.rand(256, IN, dtype=dtype) ** 3 * 2 - 1)
        assert not layer._uniform
    return layer


class _Recorder:
    """Stands in for a Triton kernel: records the UNIFORM constexpr of each launch, then
    launches the kernel."""

    def __init__(self, kernel: Any, seen: list[bool]) -> None:
        self.kernel, self.seen = kernel, seen

    def __getitem__(self, launch: tuple[int, ...]) -> Callable[..., object]:
        def run(*args: object, **constants: object) -> object:
            self.seen.append(bool(constants["UNIFORM"]))
            return self.kernel[launch](*args, **constants)

        return run


@pytest.fixture
def uniform_flags(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The UNIFORM constexpr of every kernel launch, in order."""
    from kan_engine import basis_gemm_kernels

    seen: list[bool] = []
    for name in ("forward_kernel", "input_grad_kernel", "weight_grad_kernel"):
        kernel = getattr(basis_gemm_kernels, name)
        monkeypatch.setattr(basis_gemm_kernels, name, _Recorder(kernel, seen))
    return seen


def inputs(dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn(N, IN, generator=torch.Generator().manual_seed(3), dtype=dtype) * 1.5
    x[0, 0], x[1, 1] = 40.0, -40.0  # beyond the extended grid
    return x


def outputs_and_grads(layer: KANLinear, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, ...]:
    layer.fast = fast
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    wide = y.to(torch.promote_types(y.dtype, torch.float32))  # bf16 under autocast
    (wide * torch.linspace(-1, 1, y.numel(), dtype=wide.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, layer.base_weight.grad, layer.spline_weight.grad


@pytest.mark.parametrize(("grid_size", "order"), [(5, 3), (7, 3), (5, 2), (7, 2)])
@pytest.mark.parametrize("refit", [False, True], ids=["uniform", "refit"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_equals_reference(
    grid_size: int, order: int, refit: bool, dtype: torch.dtype, uniform_flags: list[bool]
) -> None:
    layer = make_layer(grid_size, order, dtype, refit)
    x = inputs(dtype)
    ours = outputs_and_grads(layer, x, fast=True)
    assert uniform_flags == [not refit] * 3  # forward, dL/dx, dL/dW
    ref = outputs_and_grads(layer, x, fast=False)
    for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), ours, ref, strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=name)
        else:
            scale = float(b.abs().max())
            torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5, msg=name)


@pytest.mark.parametrize("refit", [False, True], ids=["uniform", "refit"])
def test_the_env_var_routes_the_layer_and_its_statistics_match(
    monkeypatch: pytest.MonkeyPatch, refit: bool
) -> None:
    """KAN_TUI_BASIS_GEMM=1 picks the route for a layer that leaves `basis_gemm` unset; the
    outside-grid share and the regulariser's statistics (folded into the forward kernel) equal
    the eager route's, on both of the kernels' paths."""
    monkeypatch.setenv(basis_gemm.ENABLE_ENV, "1")
    monkeypatch.setattr(basis_gemm, "FORWARD_SPLIT", None)  # one split: the direct store
    calls = []
    original = basis_gemm.spline_forward
    monkeypatch.setattr(
        basis_gemm, "spline_forward", lambda *a, **kw: calls.append(1) or original(*a, **kw)
    )
    layer = make_layer(5, 3, torch.float32, refit=refit)
    layer.basis_gemm = None
    layer.track_regularization = True
    x = inputs(torch.float32)
    stats = {}
    for fused in (True, False):
        layer.fused = fused
        y = layer(x)
        stats[fused] = (y.detach(), layer.outside_grid_share(), layer.regularization_loss())
    assert calls == [1]
    assert stats[True][1] == pytest.approx(stats[False][1], abs=1e-7) and stats[True][1] > 0
    torch.testing.assert_close(stats[True][0], stats[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats[True][2], stats[False][2], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("refit", [False, True], ids=["uniform", "refit"])
def test_bf16_autocast_is_close_to_the_float32_reference(refit: bool) -> None:
    layer = make_layer(5, 3, torch.float32, refit=refit)
    x = inputs(torch.float32)
    ref = outputs_and_grads(layer, x, fast=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = outputs_and_grads(layer, x, fast=True)
    assert ours[0].dtype == torch.bfloat16
    assert [g.dtype for g in ours[1:]] == [torch.float32] * 3
    for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), ours, ref, strict=True):
        error = float((a.float() - b).norm() / b.norm())
        assert error < 2e-2, f"{name}: relative error {error:.1e}"


def test_kernels_on_a_fine_refit_grid_and_on_the_knots_equal_the_reference() -> None:
    """A 40-interval refit grid (G+k = 43 padded to 64: one input per K block, six search
    steps), values on the first knot, on an inner knot and beyond the grid; each kernel alone
    against the reference basis in float64."""
    layer = make_layer(40, 3, torch.float64, refit=True)
    grid, k = layer.grid, 3
    x = inputs(torch.float64)
    x[2], x[3] = grid[:, 0], grid[:, 17]
    weight = torch.randn(OUT, 43 * IN, dtype=torch.float64)
    base = torch.randn(N, OUT, dtype=torch.float64)
    grad = torch.randn(N, OUT, dtype=torch.float64)
    basis = reference_basis(x, grid, k).transpose(1, 2).reshape(N, -1)  # (N, (G+k)*in)
    out, col_sum, outside = basis_gemm.spline_forward(
        x, grid, k, weight, base, 0.7, 2.5, count=True, want_sum=True
    )
    torch.testing.assert_close(out, 0.7 * basis @ weight.t() + 2.5 * base, atol=1e-10, rtol=0)
    torch.testing.assert_close(col_sum, basis.sum(0), atol=1e-10, rtol=0)
    assert int(outside) == int(((x < grid[:, k]) | (x >= grid[:, -k - 1])).sum())
    dw = basis_gemm.spline_weight_grad(grad, x, grid, k, 0.7, torch.float64)
    torch.testing.assert_close(dw, 0.7 * grad.t() @ basis, atol=1e-10, rtol=0)
    xr = x.clone().requires_grad_(True)
    (reference_basis(xr, grid, k).transpose(1, 2).reshape(N, -1) * (grad @ weight)).sum().backward()
    dx = basis_gemm.spline_input_grad(grad, x, grid, k, weight, 0.7)
    torch.testing.assert_close(dx, 0.7 * xr.grad, atol=1e-10, rtol=0)


def test_the_uniform_path_is_taken_on_a_fresh_grid_and_not_after_a_refit(
    uniform_flags: list[bool],
) -> None:
    """A fresh layer's grid is uniform: all three kernels take the closed form. update_grid on
    skewed data makes it non-uniform: the general path. Order 4 has no closed form here: the
    general path on a uniform grid too."""
    layer = make_layer(5, 3, torch.float32, refit=False)
    x = inputs(torch.float32)
    outputs_and_grads(layer, x, fast=True)
    assert uniform_flags == [True] * 3
    layer.update_grid(torch.rand(256, IN) ** 3 * 2 - 1)
    assert not layer._uniform
    uniform_flags.clear()
    outputs_and_grads(layer, x, fast=True)
    assert uniform_flags == [False] * 3
    assert basis_gemm.uniform_path(True, 3) and not basis_gemm.uniform_path(True, 4)
    assert basis_gemm.inverse_spacing(make_layer(5, 4, torch.float32, False).grid, 4, True) is None


@pytest.mark.parametrize("order", [1, 2, 3])
def test_uniform_kernels_equal_the_reference_and_the_general_path(order: int) -> None:
    """Each kernel alone on a uniform grid in float64, both paths, against the reference basis:
    values beyond the grid, on its first knot and on an inner one (order 1's slope jumps at a
    knot and (x - t0)/h lands on either side of it by rounding: not there)."""
    layer = make_layer(5, order, torch.float64, refit=False)
    grid, n_cols = layer.grid, 5 + order
    x = inputs(torch.float64)
    if order > 1:
        x[2], x[3] = grid[:, 0], grid[:, 4]
    weight = torch.randn(OUT, n_cols * IN, dtype=torch.float64)
    base = torch.randn(N, OUT, dtype=torch.float64)
    grad = torch.randn(N, OUT, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    basis = reference_basis(xr, grid, order).transpose(1, 2).reshape(N, -1)  # (N, (G+k)*in)
    (basis * (grad @ weight)).sum().backward()
    basis = basis.detach()
    inv_h = basis_gemm.inverse_spacing(grid, order, uniform=True)
    assert inv_h is not None
    for spacing in (inv_h, None):
        out, col_sum, outside = basis_gemm.spline_forward(
            x, grid, order, weight, base, 0.7, 2.5, count=True, want_sum=True, inv_h=spacing
        )
        torch.testing.assert_close(out, 0.7 * basis @ weight.t() + 2.5 * base, atol=1e-10, rtol=0)
        torch.testing.assert_close(col_sum, basis.sum(0), atol=1e-10, rtol=0)
        assert int(outside) == int(((x < grid[:, order]) | (x >= grid[:, -order - 1])).sum())
        dw = basis_gemm.spline_weight_grad(grad, x, grid, order, 0.7, torch.float64, spacing)
        torch.testing.assert_close(dw, 0.7 * grad.t() @ basis, atol=1e-10, rtol=0)
        dx = basis_gemm.spline_input_grad(grad, x, grid, order, weight, 0.7, spacing)
        torch.testing.assert_close(dx, 0.7 * xr.grad, atol=1e-10, rtol=0)


def test_pipeline_stages_shrink_with_the_element_size() -> None:
    """Tiles of (128, 256, 64) keep 3 stages in bfloat16 (48 KiB a stage) and get 2 in float32
    (96 KiB; 3 did not fit an H200); the shipped forward tiles (128, 256, 128) keep their 2 in
    bfloat16 and get 1 in float32; tiles too large for one stage in the budget still get one;
    small tiles keep what they ask for."""
    swept = basis_gemm.Tiles(block_n=128, block_o=256, block_k=64, num_warps=8, num_stages=3)
    assert basis_gemm.pipeline_stages(swept, 2) == 3
    assert basis_gemm.pipeline_stages(swept, 4) == 2
    forward = GPU_TILES["forward"]
    assert basis_gemm.pipeline_stages(forward, 2) == forward.num_stages == 2
    assert basis_gemm.pipeline_stages(forward, 4) == 1
    huge = basis_gemm.Tiles(block_n=256, block_o=256, block_k=256, num_stages=4)
    assert basis_gemm.pipeline_stages(huge, 4) == 1
    small = basis_gemm.Tiles(block_n=16, block_o=16, block_k=16, num_stages=5)
    assert basis_gemm.pipeline_stages(small, 8) == 5
    for tiles in (swept, *GPU_TILES.values(), huge):
        for size in (2, 4):
            stages = basis_gemm.pipeline_stages(tiles, size)
            per_stage = (tiles.block_n + tiles.block_o) * tiles.block_k * size
            assert stages == 1 or stages * per_stage <= basis_gemm.SHARED_MEMORY_BUDGET


def test_the_kernels_refuse_the_cpu_without_the_interpreter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """And the layer keeps float64 on a GPU off the route (float64 tl.dot there is unsettled)."""
    assert not basis_gemm.supports(torch.float64, torch.device("cuda"))
    assert basis_gemm.supports(torch.bfloat16, torch.device("cuda"))
    assert not basis_gemm.supports(torch.float32, torch.device("cuda"))  # no tensor cores: slow
    monkeypatch.setenv(fused_basis.INTERPRET_ENV, "0")
    x = torch.rand(3, IN)
    with pytest.raises(RuntimeError, match="need CUDA with Triton"):
        basis_gemm.spline_forward(
            x, KANLinear(IN, 2).grid, 3, torch.rand(2, 8 * IN), torch.zeros(3, 2), 1.0, 1.0
        )

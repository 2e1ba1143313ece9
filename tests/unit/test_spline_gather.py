"""The CPU's gathered spline route (`kan_engine.spline_gather`) equals the textbook reference.

Every comparison also checks which route ran (`Spy`), so a test of the gathered route cannot pass
on the dense one. The first test that needs the extension builds it (about 30 s once per
machine); where no compiler or ninja is found the route's tests skip and the fallback tests
still run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from conftest import outputs_and_grads

from kan_engine import spline_gather
from kan_engine.kan import KANLinear
from kan_engine.memory_peak import TensorMemoryPeak

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def extension() -> None:
    """Skip where a build tool is missing; a build that fails with the tools there is a bug."""
    state = spline_gather.available()
    if not state and state.reason.startswith("no "):
        pytest.skip(state.reason)
    assert state, state.reason


class Spy:
    """Counts the forwards that take the gathered route."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        apply = spline_gather.SplineGather.apply

        def counted(*args: object) -> object:
            self.calls += 1
            return apply(*args)

        monkeypatch.setattr(spline_gather.SplineGather, "apply", counted)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    yield Spy(monkeypatch)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rough_layer(
    in_f: int, out_f: int, dtype: torch.dtype = torch.float32, **kw: object
) -> KANLinear:
    """White-noise coefficients and a base branch, grid updated to a skewed batch unless
    `uniform`: every edge function is different and the grid non-uniform per input."""
    uniform = kw.pop("uniform", False)
    torch.manual_seed(0)
    layer = KANLinear(in_f, out_f, scale_base=2.5, scale_spline=0.7, dtype=dtype, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        layer.spline_weight.normal_()
    if not uniform:
        layer.update_grid(torch.rand(256, in_f, generator=gen(1), dtype=dtype) ** 3 * 2 - 1)
    return layer


def inputs(layer: KANLinear, n: int, seed: int = 2) -> torch.Tensor:
    """A batch with inputs inside, beyond the grid range and beyond the extended grid, and some
    exactly on knots (the first and last knot of the extended grid among them)."""
    x = torch.randn(n, layer.in_features, generator=gen(seed), dtype=layer.grid.dtype) * 1.5
    x[0, 0], x[1, 1 % layer.in_features] = 40.0, -40.0
    for row in range(2, min(n, 8)):
        i = row % layer.in_features
        x[row, i] = layer.grid[i, (row * 3) % layer.grid.shape[1]]
    x[min(n - 1, 8), 0] = layer.grid[0, -1]
    return x


def assert_float32_close(got: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> None:
    for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), got, ref, strict=True):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5, msg=name)


@pytest.mark.usefixtures("extension")
@pytest.mark.parametrize(
    ("in_f", "out_f", "n", "order", "grid_size"),
    [
        (6, 5, 300, 3, 5),  # one output tile, mostly padding
        (37, 70, 300, 3, 5),  # two tiles, the second partial; blocks of inputs partial
        (5, 130, 4100, 3, 5),  # rows beyond one chunk of 4096
        (9, 64, 200, 1, 8),
        (9, 64, 200, 2, 3),
        (9, 17, 200, 5, 12),
    ],
)
@pytest.mark.parametrize("uniform", [True, False], ids=["uniform", "updated"])
def test_gathered_route_equals_reference(
    spy: Spy, in_f: int, out_f: int, n: int, order: int, grid_size: int, uniform: bool
) -> None:
    layer = rough_layer(in_f, out_f, spline_order=order, grid_size=grid_size, uniform=uniform)
    assert layer._uniform is uniform
    x = inputs(layer, n)
    got = outputs_and_grads(layer, x)
    assert spy.calls == 1
    assert_float32_close(got, outputs_and_grads(layer, x, fast=False))


@pytest.mark.usefixtures("extension")
def test_masked_edges_scales_and_statistics_follow_the_reference(spy: Spy) -> None:
    """Pruned edges (zero output, zero gradient), the outside-grid share of a training forward,
    the regulariser's statistics, and a no-grad forward in eval mode."""
    layer = rough_layer(12, 80)
    mask = torch.rand(80, 12, generator=gen(3)) > 0.3
    layer.set_edge_mask(mask)
    layer.track_regularization = True
    x = inputs(layer, 257)
    got = outputs_and_grads(layer, x)
    share, loss = layer.outside_grid_share(), layer.regularization_loss()
    assert spy.calls == 1
    ref = outputs_and_grads(layer, x, fast=False)
    assert_float32_close(got, ref)
    assert 0 < share == layer.outside_grid_share()
    torch.testing.assert_close(loss, layer.regularization_loss(), rtol=1e-5, atol=0)
    assert float(got[3][~mask[:, None, :].expand_as(got[3])].abs().max()) == 0.0
    layer.eval()
    layer.fast = True
    with torch.no_grad():
        inference = layer(x)
    assert spy.calls == 2
    torch.testing.assert_close(inference, ref[0], atol=1e-5 * float(ref[0].abs().max()), rtol=1e-5)


@pytest.mark.usefixtures("extension")
def test_a_transposed_batch_of_any_layout_gets_the_reference_gradients(spy: Spy) -> None:
    layer = rough_layer(7, 33)
    x = inputs(layer, 90).t().contiguous().t()  # (90, 7), column-major
    x3 = inputs(layer, 90, seed=4).view(9, 10, 7)  # (..., in)
    for batch in (x, x3):
        assert_float32_close(
            outputs_and_grads(layer, batch), outputs_and_grads(layer, batch, False)
        )
    assert spy.calls == 2


@pytest.mark.usefixtures("extension")
def test_the_dense_route_is_kept_where_the_rule_says(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float64, autocast, an explicit chunk_size and KAN_TUI_GATHER=0 take the dense route; the
    float32 layer with none of them takes the gathered one."""
    layer = rough_layer(6, 5)
    x = inputs(layer, 64)
    outputs_and_grads(layer, x)
    assert spy.calls == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    layer.chunk_size = 16
    outputs_and_grads(layer, x)
    layer.chunk_size = None
    monkeypatch.setenv(spline_gather.ENABLE_ENV, "0")
    assert not spline_gather.enabled()
    dense = outputs_and_grads(layer, x)
    assert spy.calls == 1
    monkeypatch.delenv(spline_gather.ENABLE_ENV)
    assert_float32_close(outputs_and_grads(layer, x), dense)
    assert spy.calls == 2
    double = rough_layer(6, 5, dtype=torch.float64)
    outputs_and_grads(double, inputs(double, 64))
    assert spy.calls == 2


def test_without_the_extension_the_layer_falls_back_to_the_same_results(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer = rough_layer(6, 5)
    x = inputs(layer, 64)
    ref = outputs_and_grads(layer, x, fast=False)
    missing = spline_gather.Availability(False, "no C++ compiler: test")
    monkeypatch.setattr(spline_gather, "_load", lambda: (None, missing))
    assert not spline_gather.available()
    assert spline_gather.available().reason == "no C++ compiler: test"
    assert_float32_close(outputs_and_grads(layer, x), ref)
    assert spy.calls == 0


def test_a_missing_compiler_is_named_without_a_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "kan-tui-no-such-compiler")
    module, state = spline_gather._load.__wrapped__()
    assert module is None
    assert not state
    assert state.reason == "no C++ compiler: 'kan-tui-no-such-compiler' is not on PATH"


@pytest.mark.usefixtures("extension")
def test_the_gathered_route_builds_no_basis(spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 4096 rows and 29 basis functions the dense route's basis buffer dominates its peak;
    the gathered route holds O(N * (in + out')) and the transposed weight instead."""

    def peak() -> int:
        layer = KANLinear(32, 4, grid_size=20)
        x = torch.randn(4096, 32, generator=gen(16), requires_grad=True)
        with TensorMemoryPeak() as meter:
            layer(x).sum().backward()
        return meter.peak

    gathered = peak()
    assert spy.calls == 1
    monkeypatch.setenv(spline_gather.ENABLE_ENV, "0")
    assert gathered < peak() / 3
    assert spy.calls == 1


@pytest.mark.usefixtures("extension")
def test_only_the_gradients_asked_for_are_computed_and_they_are_the_references(
    spy: Spy,
) -> None:
    """A batch that needs no gradient (a first layer's), then frozen spline weights: the
    backward skips the slopes, then the weight gradient, and what it computes is unchanged."""
    layer = rough_layer(11, 40)
    x = inputs(layer, 150)
    ref = outputs_and_grads(layer, x, fast=False)
    layer.fast = True
    layer.zero_grad(set_to_none=True)
    layer(x).mul(torch.linspace(-1, 1, 150 * 40).view(150, 40)).sum().backward()
    for grad, want in ((layer.base_weight.grad, ref[2]), (layer.spline_weight.grad, ref[3])):
        torch.testing.assert_close(grad, want, atol=1e-5 * float(want.abs().max()), rtol=1e-5)
    layer.spline_weight.requires_grad_(False)
    layer.zero_grad(set_to_none=True)
    got = outputs_and_grads(layer, x)
    assert got[3] is None
    assert_float32_close((*got[:3], ref[3]), ref)
    assert spy.calls == 2


def test_a_stale_build_lock_is_removed_and_a_fresh_one_kept(tmp_path) -> None:
    """torch waits forever on a lock that a killed build left; one older than any build goes."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    spline_gather.clear_stale_lock(tmp_path)
    assert lock.exists()  # a build may be running right now
    old = time.time() - spline_gather.STALE_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    spline_gather.clear_stale_lock(tmp_path)
    assert not lock.exists()
    spline_gather.clear_stale_lock(tmp_path)  # nothing there: no error


@pytest.mark.usefixtures("extension")
def test_dense_only_blocks_take_the_dense_route_and_a_gpu_estimate_uses_one(
    spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GPU run's memory estimate bounds the fused route, whose operand this route never
    builds: it measures the dense route, whether or not the gathered one is on."""
    from kan_engine import memory

    layer = rough_layer(12, 8, uniform=True)
    x = torch.rand(16, 12) * 2 - 1
    with spline_gather.dense_only():
        layer(x)
    assert spy.calls == 0
    layer(x)
    assert spy.calls == 1

    def slope() -> float:
        model = KANLinear(64, 32)
        sgd = lambda m: torch.optim.SGD(m.parameters())  # noqa: E731
        estimate = memory.measure(model, (64,), 32, sgd, dense_basis=True)
        return estimate.per_sample_bytes

    with_route = slope()
    assert spy.calls == 2  # only the estimate's untimed first step took the gathered route
    monkeypatch.setenv(spline_gather.ENABLE_ENV, "0")
    assert with_route == slope()


def test_a_build_is_announced_only_where_the_next_forward_would_build(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools
    import os

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache
    unloaded = functools.cache(lambda: (None, spline_gather.Availability(False, "test")))
    monkeypatch.setattr(spline_gather, "_load", unloaded)
    if spline_gather._missing_tool():
        assert not spline_gather.build_pending(torch.float32)  # nothing would be built
        return
    assert spline_gather.build_pending(torch.float32)
    assert not spline_gather.build_pending(torch.float64)  # that route is dense
    monkeypatch.setenv(spline_gather.ENABLE_ENV, "0")
    assert not spline_gather.build_pending(torch.float32)
    monkeypatch.delenv(spline_gather.ENABLE_ENV)
    name = spline_gather._extension_name()
    library = tmp_path / name / f"{name}.so"
    library.write_bytes(b"")  # a build newer than the source
    assert not spline_gather.build_pending(torch.float32)
    old = spline_gather.SOURCE.stat().st_mtime - 60
    os.utime(library, (old, old))  # the source changed since: torch rebuilds
    assert spline_gather.build_pending(torch.float32)
    unloaded()  # loaded in this process: nothing to wait for
    assert not spline_gather.build_pending(torch.float32)


def test_a_cpu_run_says_it_builds_before_the_build(
    tiny_config, runs_dir, recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kan_engine.trainer import Trainer

    builds: list[int] = []  # the number of events seen when the build started
    monkeypatch.setattr(spline_gather, "build_pending", lambda dtype: dtype == torch.float32)
    monkeypatch.setattr(spline_gather, "available", lambda: builds.append(len(recorder.events)))
    Trainer(tiny_config(**{"train.epochs": 1}), sink=recorder, out_dir=runs_dir).setup()
    notices = [event.message for event in recorder.of("notice")]
    assert notices == [spline_gather.BUILD_NOTICE] and builds == [1]


def test_the_lr_finder_says_it_builds_before_the_build(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kan_engine.lr_find import find_lr

    said: list[str] = []
    builds: list[int] = []
    monkeypatch.setattr(spline_gather, "build_pending", lambda dtype: dtype == torch.float32)
    monkeypatch.setattr(spline_gather, "available", lambda: builds.append(len(said)))
    find_lr(tiny_config(), steps=5, notice=said.append)
    assert said == [spline_gather.BUILD_NOTICE] and builds == [1]


def test_the_memory_estimate_says_it_builds_before_the_build(
    tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kan_engine import memory

    said: list[str] = []
    builds: list[int] = []
    monkeypatch.setattr(memory, "_CACHE", {})
    monkeypatch.setattr(spline_gather, "build_pending", lambda dtype: dtype == torch.float32)
    monkeypatch.setattr(spline_gather, "available", lambda: builds.append(len(said)))
    memory.estimate(tiny_config(), notice=said.append)
    assert said == [spline_gather.BUILD_NOTICE] and builds == [1]
    monkeypatch.setattr(memory, "_runs_on_gpu", lambda config: True)
    memory.estimate(tiny_config(**{"train.seed": 1}), notice=said.append)
    assert len(said) == 1  # a GPU run's estimate takes the dense route: nothing to build

"""The cached launcher of compiled Triton kernels gives what Triton's own launch gives (CUDA)."""

from __future__ import annotations

import pytest
import torch

from kan_engine import fused_basis, triton_launch
from kan_engine.kan import KANLinear

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and fused_basis.available(torch.device("cuda"))),
    reason="needs CUDA with Triton",
)


@needs_cuda
def test_cached_launches_equal_the_first_one_through_triton() -> None:
    """The first call of a key compiles through Triton and is cached; the later ones go straight
    to the launcher, with every argument (constexprs included) in the kernel's order."""
    layer = KANLinear(300, 7, device="cuda")
    x = torch.randn(65, 300, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    outside = torch.zeros((), device="cuda")
    first = fused_basis.layer_operand(x, layer.grid, 3, torch.float32, 2.5, 1.0, outside).clone()
    first_share = outside.clone()
    cached = len(triton_launch._COMPILED)
    again = fused_basis.layer_operand(x, layer.grid, 3, torch.float32, 2.5, 1.0, outside)
    assert cached > 0 and len(triton_launch._COMPILED) == cached  # no new key: the cache ran
    assert torch.equal(first, again)
    torch.testing.assert_close(first_share, outside)  # float atomics: any order of the sum
    grad = torch.randn_like(first)
    n_cols = layer.grid.shape[1] - 4
    via = [
        fused_basis.input_grad(grad[:, 300:], x, layer.grid, 3, 0.5, None, grad[:, :300], 2.0)
        for _ in range(2)
    ]
    assert torch.equal(via[0], via[1])
    assert first.shape == (65, (1 + n_cols) * 300)


@needs_cuda
def test_the_fused_layer_on_cuda_equals_the_reference_after_many_calls() -> None:
    """Repeated eager fwd+bwd (the cached path) in float32 against the textbook layer."""
    layer = KANLinear(50, 9, device="cuda")
    x = torch.rand(33, 50, device="cuda") * 2.4 - 1.2
    results = []
    for fast in (True, True, True, False):
        layer.fast = fast
        xg = x.clone().requires_grad_(True)
        layer.zero_grad()
        layer(xg).square().sum().backward()
        results.append((xg.grad, layer.base_weight.grad.clone(), layer.spline_weight.grad.clone()))
    for got in results[:3]:
        for a, b in zip(got, results[3], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_key_separates_what_triton_specialises_on() -> None:
    """Alignment, dtype, integers equal to 1 or divisible by 16 each compile their own kernel."""
    t = torch.zeros(8)
    cases = [t, t[1:], t.double(), 1, 16, 17, 2**40]  # t[1:]: 4 bytes off, not 16-aligned
    keys = {triton_launch._signature((case,)) for case in cases}
    assert len(keys) == len(cases)
    assert triton_launch._signature((18, 0.5)) == triton_launch._signature((17, 2.0))


def test_a_profiler_hook_sends_every_launch_through_triton() -> None:
    """While a launch hook is installed, Triton must build its metadata: no direct launch."""
    knobs = pytest.importorskip("triton.knobs")
    assert triton_launch._launch_hooks() is not None
    hook = knobs.runtime.launch_enter_hook

    def noting(metadata: object) -> None:
        pass

    hook.add(noting)
    try:
        assert triton_launch._launch_hooks() is None
    finally:
        hook.remove(noting)
    assert triton_launch._launch_hooks() is not None


@needs_cuda
def test_the_fused_layer_runs_under_torch_compile() -> None:
    """train.compile: Inductor relaunches the layer's kernels itself; same numbers as eager.
    (A float argument of 1.0 once reached its launcher as an integer: TypeError.)"""
    layer = KANLinear(40, 6, device="cuda", scale_base=2.5)
    model = torch.nn.Sequential(torch.nn.LayerNorm(40, device="cuda"), layer)
    x = torch.rand(32, 40, device="cuda") * 2 - 1
    results = []
    for run in (model, torch.compile(model)):
        model.zero_grad()
        out = run(x)
        out.square().sum().backward()
        results.append((out.detach(), layer.spline_weight.grad.clone()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

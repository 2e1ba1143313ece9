"""The float32 matmul on tensor cores (`tf32x3`) and the fused layer's use of it. Triton's
interpreter runs the kernel here (its products are plain float32, so the plumbing is checked:
strides, edges, accumulation, which products take it); a CUDA test checks the TF32 arithmetic
against float64."""

from __future__ import annotations

import pytest
import torch
from conftest import outputs_and_grads

from kan_engine import fused_basis, tf32x3
from kan_engine.kan import KANLinear

needs_kernels = pytest.mark.skipif(
    not fused_basis.runnable(torch.device("cpu")), reason="needs Triton (its CPU interpreter)"
)
SMALL = tf32x3.Tiles(16, 16, 16, 4, 1)  # a few programs, so the interpreter is quick


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@needs_kernels
@pytest.mark.parametrize("a_major", ["rows", "cols"])
@pytest.mark.parametrize("b_major", ["rows", "cols"])
def test_the_product_of_any_layout_and_edge_is_the_matmul(a_major: str, b_major: str) -> None:
    m, k, n = 37, 41, 23  # no multiple of a block: every edge is masked

    def laid_out(rows: int, cols: int, major: str, seed: int) -> torch.Tensor:
        t = torch.randn(rows, cols, generator=gen(seed))
        return t if major == "rows" else t.t().contiguous().t()

    a, b = laid_out(m, k, a_major, 1), laid_out(k, n, b_major, 2)
    torch.testing.assert_close(tf32x3.matmul(a, b, SMALL), a @ b, atol=1e-5, rtol=1e-5)
    start = torch.randn(m, n, generator=gen(3))
    total = tf32x3.matmul(a, b, SMALL, start.clone(), accumulate=True)
    torch.testing.assert_close(total, start + a @ b, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_the_transposed_operand_holds_the_same_values() -> None:
    layer = KANLinear(13, 3)
    x = torch.randn(45, 13, generator=gen(4)) * 1.5
    row_major = fused_basis.layer_operand(x, layer.grid, 3, torch.float32, 0.7, 1.3)
    transposed = fused_basis.layer_operand(
        x, layer.grid, 3, torch.float32, 0.7, 1.3, transposed=True
    )
    assert transposed.shape == row_major.t().shape
    assert transposed.stride(1) == 1 and transposed.stride(0) % fused_basis.ROW_ALIGN == 0
    torch.testing.assert_close(transposed, row_major.t(), atol=0, rtol=0)


@needs_kernels
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_the_layer_on_tensor_core_products_equals_its_reference(
    monkeypatch: pytest.MonkeyPatch, chunk_size: int | None
) -> None:
    """Every product of the fused route through the kernel (thresholds at 0), the weight
    gradient summed over row chunks included; widths that are multiples of 16 (others keep
    cuBLAS: their rows are not 64-byte aligned)."""
    taken = []
    matmul = tf32x3.matmul
    monkeypatch.setattr(tf32x3, "MIN_FLOP", 0)
    monkeypatch.setattr(tf32x3, "MIN_WAVES", 0)
    monkeypatch.setattr(tf32x3, "CONFIGS", (SMALL,))
    monkeypatch.setattr(
        tf32x3, "matmul", lambda *args, **kw: taken.append(1) or matmul(*args, **kw)
    )
    torch.manual_seed(0)
    layer = KANLinear(16, 16, fused=True, chunk_size=chunk_size, scale_base=0.8)
    with torch.no_grad():
        layer.spline_weight.normal_()
    x = torch.randn(40, 16, generator=gen(5)) * 1.5
    fast = outputs_and_grads(layer, x, fast=True)
    chunks = 1 if chunk_size is None else -(-40 // chunk_size)
    assert len(taken) == 3 * chunks  # forward, dL/dW, dL/dOperand per chunk
    taken.clear()
    outputs_and_grads(KANLinear(9, 16, fused=True), x[:, :9], fast=True)
    assert not taken  # 9 * 9 columns
    ref = outputs_and_grads(layer, x, fast=False)
    for name, a, b in zip(("output", "d/dx", "d/dW_base", "d/dC"), fast, ref, strict=True):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, atol=1e-5 * scale, rtol=1e-5, msg=name)


def test_cublas_keeps_what_tensor_cores_would_not_speed_up(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setenv(fused_basis.INTERPRET_ENV, "1")
    assert tf32x3.allowed(torch.float32, cpu)
    assert not tf32x3.allowed(torch.bfloat16, cpu)  # tensor cores already
    assert not tf32x3.allowed(torch.float64, cpu)
    big = (4096, 1024, 9216)
    assert tf32x3.tiles(*big, cpu) is not None
    assert tf32x3.tiles(64, 64, 64, cpu) is None  # host-bound
    monkeypatch.setattr(tf32x3, "_sm_count", lambda device: 10**6)
    assert tf32x3.tiles(*big, cpu) is None  # too few tiles for the SMs
    monkeypatch.setenv(tf32x3.ENABLE_ENV, "0")
    assert not tf32x3.allowed(torch.float32, cpu)
    monkeypatch.delenv(tf32x3.ENABLE_ENV)
    monkeypatch.setenv(fused_basis.INTERPRET_ENV, "0")
    assert not tf32x3.allowed(torch.float32, cpu)  # the CPU without the interpreter


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensor_core_products_keep_float32_accuracy() -> None:
    """Against float64 at the layer's three products of (4096, 1024->1024): within float32's
    bound of the other tests (1e-5 of the largest entry), where plain TF32 is ~3e-4."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    operand = torch.rand(4096, 9216, device=dev, generator=g) * 2 - 1
    weight = torch.randn(1024, 9216, device=dev, generator=g) / 96
    grad = torch.randn(4096, 1024, device=dev, generator=g)
    for a, b in ((operand, weight.t()), (grad.t().contiguous(), operand), (grad, weight)):
        config = tf32x3.tiles(a.shape[0], b.shape[1], a.shape[1], dev)
        assert tf32x3.allowed(torch.float32, dev) and config is not None
        ref = a.double() @ b.double()
        err = (tf32x3.matmul(a, b, config).double() - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, float(err)

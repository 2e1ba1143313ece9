"""The spline branch as three Triton matmuls that generate the B-spline basis in their operand
loads, so the dense basis is never written to memory.

Today's fused route (`fused_basis`) writes the (N, G+k, in) basis in the matmul dtype and hands
it to cuBLAS, once in forward and again in backward (plus dL/dB, as large, for the input
gradient). At (4096, 3136->256) bf16 that basis is 205 MB per pass: the dense-GEMM floor of the
route is above the layer's target. The kernels of `basis_gemm_kernels` compute each A (or B^T)
tile of the GEMM from x and the knots in registers instead and contract dOut @ W with the basis
slopes in registers for dL/dx. Two ways to build a tile, chosen at compile time:

* uniform (the layer's `_uniform` grids, orders 1 to 3: `uniform_path`): each element of the tile
  is the cardinal B-spline at (x - t0)/h - c in closed form, in the tile's own layout; the wrapper
  computes 1/h per input once per layer call (`inverse_spacing`), t0 is read from the grid;
* general (refit grids, other orders): interval by binary search on each input's own knots, de
  Boor's k+1 values, scattered into the tile in registers and reshaped to it. The search's
  dependent loads, the scatter and the reshape cost more than the tile's matmul.

Both give the true basis (no `local_scale` factor). The kernels:

* `spline_forward`: alpha * B(x) @ W^T + beta * base, with the count of inputs outside the grid
  range (the layer's `outside_grid_share`) and the basis column sums (the regulariser's
  statistic) folded in as atomic adds of the programs of the first output tile;
* `spline_input_grad`: dL/dx from dOut, W and x;
* `spline_weight_grad`: dL/dW = dOut^T @ B(x).

`SplineGemm` is the autograd function over them; `KANLinear` takes it when `basis_gemm` (or
KAN_TUI_BASIS_GEMM=1) is set on its fused route. It stays opt-in: timed on an H200 (session 7,
BENCHMARKS.md) it is exact but not faster than the fused route (bf16 at (4096, 3136->256): 2.0 ms
fwd+bwd eager, 1.7 ms in a CUDA graph, against 1.7-1.9 and 1.1 ms), and it needs 2.5x less
memory (102 MiB against 250 MiB): the route for a layer whose basis does not fit.

The block sizes in `TILES` are the best of a sweep on an H200 at (4096, 3136->256) bf16 on the
uniform path (bench/basis_gemm_check.py --sweep times alternatives); their pipeline stages shrink
with the element size (`pipeline_stages`), so that float32 fits in shared memory. The forward
has few output tiles at the layer's usual shapes (out = 256) and a long K ((G+k)*in = 25088 at
in = 3136), so it is split over K into float partial sums (`forward_splits`), summed in a fixed
order afterwards: deterministic, unlike atomics.

float32 operands multiply in full float32 (`input_precision="ieee"`, no tensor cores) unless
torch allows TF32 for matmuls, as cuBLAS does on the other route; `FP32_PRECISION = "tf32x3"`
(three TF32 products per multiply, about float32's accuracy on tensor cores) is there to be
checked and timed on the GPU (bench/basis_gemm_check.py --fp32-precision tf32x3).

float64 goes through `tl.dot` in float64 under Triton's interpreter (the tests' 1e-10 checks);
whether Triton lowers a float64 `tl.dot` on the GPU is not settled (triton-lang/triton#5483),
so there float64 keeps today's fused route (`supports`); bench/basis_gemm_check.py --fp64 tries
the kernels in float64 on the device.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

from kan_engine import fused_basis

__all__ = [
    "CARDINAL_ORDERS",
    "ENABLE_ENV",
    "SHARED_MEMORY_BUDGET",
    "TILES",
    "SplineGemm",
    "Tiles",
    "enabled",
    "supports",
    "forward_splits",
    "inverse_spacing",
    "pipeline_stages",
    "spline_forward",
    "spline_input_grad",
    "spline_weight_grad",
    "uniform_path",
]

ENABLE_ENV = "KAN_TUI_BASIS_GEMM"  # "1": KANLinear's fused route uses these kernels by default


@dataclass(frozen=True)
class Tiles:
    """Block sizes of one kernel: rows, outputs, K = basis functions x inputs (a power of two;
    a block holds block_k // next_pow2(G+k) inputs, at least one), warps, pipeline stages (at
    most: `pipeline_stages` lowers them for wide elements)."""

    block_n: int
    block_o: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


TILES: dict[str, Tiles] = {  # the uniform path's best at (4096, 3136->256) bf16, H200 (session 7)
    "forward": Tiles(block_n=128, block_o=256, block_k=128, num_warps=8, num_stages=2),
    "input_grad": Tiles(block_n=64, block_o=64, block_k=128, num_warps=4, num_stages=3),
    "weight_grad": Tiles(block_n=32, block_o=256, block_k=64, num_warps=4, num_stages=3),
}
FORWARD_SPLIT: int | None = None  # K splits of the forward; None: `forward_splits` picks
FP32_PRECISION = "ieee"  # tl.dot's input precision for float32 when torch does not allow TF32
MIN_BLOCK = 16  # the smallest tl.dot dimension on a GPU (the interpreter takes any: tests)
PROGRAMS_PER_SM = 1  # what `forward_splits` aims at: at (4096, 3136->256) bf16 one program per
# SM (4 splits: 0.46 ms) beat two (9 splits: 0.60 ms) on the H200
SHARED_MEMORY_BUDGET = 220 * 1024  # bytes of pipeline buffers per program (`pipeline_stages`)
CARDINAL_ORDERS = (1, 2, 3)  # spline orders whose closed form the uniform path knows


def enabled() -> bool:
    """Whether KAN_TUI_BASIS_GEMM asks for this route by default."""
    return os.environ.get(ENABLE_ENV, "0") == "1"


def supports(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the layer should take this route for matmuls in `dtype` on `device`. On a GPU
    only bfloat16 and float16: float32 multiplies without tensor cores here and measured 30-40x
    slower than the fused route (H200, session 7: 175 ms against 4.7 ms fwd+bwd at (4096,
    3136->256)); float64 has no settled compiled `tl.dot` (module docstring; a compiled float64
    route would also need alpha, beta and scale as float64, which Triton passes as float32).
    Under Triton's interpreter (the CPU: tests) every dtype runs."""
    return device.type == "cpu" or dtype in (torch.bfloat16, torch.float16)


def pipeline_stages(tiles: Tiles, element_size: int) -> int:
    """tiles.num_stages, lowered so that the pipeline's buffers stay within
    `SHARED_MEMORY_BUDGET`: each stage holds one K step of both operand tiles, about
    (block_n + block_o) * block_k elements (an overestimate for the kernels whose loop runs
    over another dimension), and float32 tiles are twice bfloat16's bytes. An H200 gives a
    program 227 KiB (232448 bytes); the budget leaves room for Triton's own scratch (the float32
    forward at the former (128, 128, 128) tiles and 3 stages asked for 237568 bytes and did not
    launch; this rule gives it 1). At least one stage."""
    per_stage = (tiles.block_n + tiles.block_o) * tiles.block_k * element_size
    return max(1, min(tiles.num_stages, SHARED_MEMORY_BUDGET // per_stage))


def uniform_path(uniform: bool, order: int) -> bool:
    """Whether the kernels take the uniform path for a grid that `basis.is_uniform` calls
    `uniform` and spline order `order` (the closed forms exist for `CARDINAL_ORDERS`)."""
    return uniform and order in CARDINAL_ORDERS


def inverse_spacing(grid: torch.Tensor, order: int, uniform: bool) -> torch.Tensor | None:
    """1/h (in,) of each input's uniform grid (in, M+1), as `basis.local_basis` takes h, when
    the kernels take the uniform path (`uniform_path`); else None (the general path). Computed
    once per layer call and passed to every kernel of it."""
    if not uniform_path(uniform, order):
        return None
    return (grid.shape[1] - 1) / (grid[:, -1] - grid[:, 0])


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def forward_splits(tiles: int, blocks: int, device: torch.device) -> int:
    """K splits of the forward for `tiles` output tiles over `blocks` input blocks: enough for
    `PROGRAMS_PER_SM` programs per SM (one split off CUDA), never an empty split."""
    if FORWARD_SPLIT is not None:
        wanted = FORWARD_SPLIT
    elif device.type == "cuda":
        wanted = -(-PROGRAMS_PER_SM * _sm_count(device) // tiles)
    else:
        wanted = 1
    per_split = -(-blocks // max(1, min(wanted, blocks)))
    return max(1, -(-blocks // max(per_split, 1)))


class _Shape:
    """Compile-time constants and block sizes shared by the three kernels for one call, for
    operands of `element_size` bytes; `inv_h` (None: the general path) gives the uniform flag
    and the kernels' inv_h_ptr (the grid, never read, on the general path)."""

    def __init__(
        self, x: torch.Tensor, grid: torch.Tensor, order: int, n_out: int, tiles: Tiles,
        element_size: int, inv_h: torch.Tensor | None,
    ) -> None:  # fmt: skip
        n_knots = grid.shape[1]
        self.inv_h = grid if inv_h is None else inv_h
        self.n_rows, self.n_in = x.shape
        self.n_out = n_out
        self.n_cols = n_knots - 1 - order
        cols_p2 = 1 << (self.n_cols - 1).bit_length()
        if tiles.block_k & (tiles.block_k - 1):
            raise ValueError(f"basis_gemm: block_k must be a power of two (got {tiles.block_k})")
        # Blocks no larger than the problem needs, and no smaller than tl.dot takes.
        self.block_n = min(tiles.block_n, max(MIN_BLOCK, _pow2(self.n_rows)))
        self.block_o = min(tiles.block_o, max(MIN_BLOCK, _pow2(n_out)))
        self.block_i = max(1, tiles.block_k // cols_p2)
        used = Tiles(self.block_n, self.block_o, cols_p2 * self.block_i, tiles.num_warps,
                     tiles.num_stages)  # fmt: skip
        self.constants = {
            "ORDER": order,
            "N_KNOTS": n_knots,
            "SEARCH_STEPS": max(1, math.ceil(math.log2(n_knots - 1))),
            "UNIFORM": inv_h is not None,
            "COLS_P2": cols_p2,
            "BLOCK_N": self.block_n,
            "BLOCK_O": self.block_o,
            "BLOCK_I": self.block_i,
            "num_warps": tiles.num_warps,
            "num_stages": pipeline_stages(used, element_size),
        }


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _kernels(x: torch.Tensor):  # -> the basis_gemm_kernels module
    if not fused_basis.runnable(x.device):
        raise RuntimeError(
            f"basis GEMM kernels need CUDA with Triton (x is on {x.device}; "
            f"{fused_basis.DISABLE_ENV}={os.environ.get(fused_basis.DISABLE_ENV, '1')})"
        )
    from kan_engine import basis_gemm_kernels  # imports triton: only once it is known to be there

    return basis_gemm_kernels


def _dot_options(dtype: torch.dtype) -> dict[str, object]:
    """tl.dot's input precision, accumulator dtype and interpreter workaround (`_dot` of the
    kernels) for operands of `dtype`."""
    import triton.language as tl

    tf32 = torch.backends.cuda.matmul.allow_tf32
    fp32 = "tf32" if tf32 else FP32_PRECISION
    return {
        "PRECISION": fp32 if dtype == torch.float32 else "ieee",  # ignored for other dtypes
        "ACC": tl.float64 if dtype == torch.float64 else tl.float32,
        "WIDEN": dtype == torch.bfloat16 and os.environ.get(fused_basis.INTERPRET_ENV) == "1",
    }


def spline_forward(
    x: torch.Tensor, grid: torch.Tensor, order: int, weight: torch.Tensor, base: torch.Tensor,
    alpha: float, beta: float, count: bool = False, want_sum: bool = False,
    inv_h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """alpha * B(x) @ weight^T + beta * base (N, out) in base's dtype, for x (N, in) (float32 or
    float64: the basis arithmetic), grid (in, M+1) in x's dtype, weight (out, (G+k)*in) and base
    (N, out) in the matmul dtype. Also: the basis column sums ((G+k)*in in x's dtype; empty
    unless `want_sum`) and the number of inputs outside [t_k, t_{G+k}) (int32 (1,), 0 unless
    `count`). `inv_h`: `inverse_spacing` of a uniform grid (the uniform path), or None."""
    kernels = _kernels(x)
    shape = _Shape(x, grid, order, weight.shape[0], TILES["forward"], weight.itemsize, inv_h)
    tiles_n, tiles_o = _cdiv(shape.n_rows, shape.block_n), _cdiv(shape.n_out, shape.block_o)
    blocks = _cdiv(shape.n_in, shape.block_i)
    splits = forward_splits(tiles_n * tiles_o, blocks, x.device)
    count_buf = torch.zeros(1, device=x.device, dtype=torch.int32)
    col_sum = torch.zeros(weight.shape[1] if want_sum else 0, device=x.device, dtype=x.dtype)
    out = torch.empty(shape.n_rows, shape.n_out, device=x.device, dtype=base.dtype)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    target = out if splits == 1 else torch.empty(splits, *out.shape, device=x.device, dtype=acc)
    if out.numel():
        kernels.forward_kernel[(tiles_n, tiles_o, splits)](
            x, grid, shape.inv_h, weight, base, target, count_buf,
            col_sum if want_sum else count_buf,
            shape.n_rows, shape.n_in, shape.n_out, alpha, beta, _cdiv(blocks, splits),
            PARTIAL=splits > 1, COUNT=count, SUM=want_sum,
            **_dot_options(weight.dtype), **shape.constants,
        )  # fmt: skip
    if splits > 1 and acc == out.dtype:
        torch.sum(target, 0, out=out)
    elif splits > 1:
        out.copy_(target.sum(0))
    return out, col_sum, count_buf


def spline_input_grad(
    grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, order: int, weight: torch.Tensor,
    scale: float, inv_h: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """scale * dL/dx (N, in) in x's dtype from dL/dOut (N, out) and weight (out, (G+k)*in), both
    in the matmul dtype, for the basis of `spline_forward` (`inv_h` as there)."""
    kernels = _kernels(x)
    shape = _Shape(x, grid, order, weight.shape[0], TILES["input_grad"], weight.itemsize, inv_h)
    out = torch.empty_like(x)
    launch = (_cdiv(shape.n_rows, shape.block_n), _cdiv(shape.n_in, shape.block_i))
    if out.numel():
        kernels.input_grad_kernel[launch](
            grad, x, grid, shape.inv_h, weight, out, scale, shape.n_rows, shape.n_in, shape.n_out,
            **_dot_options(weight.dtype), **shape.constants,
        )  # fmt: skip
    return out


def spline_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, order: int, scale: float,
    dtype: torch.dtype, inv_h: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """scale * dL/dW (out, (G+k)*in) in `dtype` from dL/dOut (N, out) in the matmul dtype
    (`inv_h` as in `spline_forward`)."""
    kernels = _kernels(x)
    shape = _Shape(x, grid, order, grad.shape[1], TILES["weight_grad"], grad.itemsize, inv_h)
    out = torch.empty(shape.n_out, shape.n_cols * shape.n_in, device=x.device, dtype=dtype)
    if shape.n_rows == 0:
        return out.zero_()
    launch = (_cdiv(shape.n_out, shape.block_o), _cdiv(shape.n_in, shape.block_i))
    if out.numel():
        kernels.weight_grad_kernel[launch](
            grad, x, grid, shape.inv_h, out, scale, shape.n_rows, shape.n_in, shape.n_out,
            **_dot_options(grad.dtype), **shape.constants,
        )  # fmt: skip
    return out


class SplineGemm(torch.autograd.Function):
    """(scale_base * base + scale_spline * B(x) @ C^T, basis column sums, outside count) through
    the kernels, saving only x (with the weight and grid) for backward, as `_SplineLinear` of
    `kan.py` does; no basis buffer exists, so there is nothing to chunk. `dtype` is the matmul
    dtype (autocast's, or the weight's); the basis arithmetic runs in float32 (float64 for
    float64 inputs). The column sums are empty unless `want_sum`, the count 0 unless `count`.
    `uniform`: the layer's `_uniform` (the kernels' uniform path where `uniform_path` allows;
    its 1/h is computed here once and saved for backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        base: torch.Tensor,
        weight: torch.Tensor,
        grid: torch.Tensor,
        order: int,
        uniform: bool,
        dtype: torch.dtype,
        scale_base: float,
        scale_spline: float,
        want_sum: bool,
        count: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        work = torch.promote_types(x.dtype, torch.float32)
        gw = grid.to(work).contiguous()
        inv_h = inverse_spacing(gw, order, uniform)
        out, col_sum, outside = spline_forward(
            x.to(work).contiguous(), gw, order,
            weight.to(dtype).contiguous(), base.to(dtype).contiguous(),
            scale_spline, scale_base, count, want_sum, inv_h,
        )  # fmt: skip
        ctx.save_for_backward(x, weight, grid, inv_h)
        ctx.config = (order, dtype, scale_base, scale_spline, base.dtype)
        ctx.mark_non_differentiable(col_sum, outside)
        return out, col_sum, outside

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_out: torch.Tensor,
        _grad_sum: torch.Tensor,
        _grad_count: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, grid, inv_h = ctx.saved_tensors
        order, dtype, scale_base, scale_spline, base_dtype = ctx.config
        need_x, need_base, need_w = ctx.needs_input_grad[:3]
        g = grad_out.to(dtype).contiguous()  # (N, out); a sum() gives a stride-0 grad
        grad_x = grad_base = grad_w = None
        if need_base:
            grad_base = (g * scale_base).to(base_dtype)
        work = torch.promote_types(x.dtype, torch.float32)
        xw, gw = x.to(work).contiguous(), grid.to(work).contiguous()
        if need_x:
            w = weight.to(dtype).contiguous()
            grad_x = spline_input_grad(g, xw, gw, order, w, scale_spline, inv_h).to(x.dtype)
        if need_w:
            grad_w = spline_weight_grad(g, xw, gw, order, scale_spline, weight.dtype, inv_h)
        return grad_x, grad_base, grad_w, *(None,) * 8

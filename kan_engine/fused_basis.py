"""The dense B-spline basis and its input gradient, each as one hand-written Triton kernel.

On a GPU the eager fast path of `kan.py` (local de Boor values scattered into a padded buffer)
costs dozens of small kernels per layer and step: at batch 64 a training step is bound by kernel
launches, and at (4096, 3136->256) the elementwise passes take longer than the matmuls. The two
kernels of `basis_kernels` replace them:

* `dense_basis`: x (N, in) -> the (N, G+k, in) basis, already in the matmul dtype and in the
  (basis function, input) column order of `spline_weight`, so `flatten(1)` is the GEMM operand;
* `input_grad`: dL/dB (N, G+k, in) and x -> dL/dx (N, in).

They are exact on any grid (the interval is searched in each input's own knots), so the layer
needs no second code path after `update_grid`. An earlier version let torch.compile generate
these kernels from broadcast tensor code: it evaluated the recursion for every basis entry
(about 5x slower here) and recompiled per dtype and order until Dynamo's recompile limit turned
into a hard error. Triton's interpreter (`TRITON_INTERPRET=1`) runs the same kernels on CPU
tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from kan_engine import triton_launch

__all__ = ["available", "dense_basis", "input_grad", "layer_operand", "runnable"]

DISABLE_ENV = "KAN_TUI_FUSED"  # "0" turns the fused path off (debugging, A/B benchmarks)
INTERPRET_ENV = "TRITON_INTERPRET"  # "1": Triton runs kernels on CPU tensors (tests)
# One program: one row x 128 inputs (coalesced), one value per thread. Swept on the H200 over
# 1-8 rows, 64-512 inputs, 1-8 warps at (4096, 3136): this was among the fastest for both
# kernels and both dtypes (0.20 ms per basis, 0.17 ms per gradient; 8x128 took 0.26 ms).
BLOCK_N, BLOCK_I, NUM_WARPS = 1, 128, 4
# The transposed operand's tiles: 32 adjacent rows (one 128-byte line of float32 per value
# written) x 32 inputs. H200, session 9: 0.23 ms at (4096, 3136) (row-major 0.17 ms); (128, 8),
# (16, 64), (64, 16) within 5 %, (64, 32) and (32, 64) 30 % slower.
TRANSPOSED_BLOCKS = (32, 32)
ROW_ALIGN = 16  # the transposed operand's row stride is a multiple of this many elements


def available(device: torch.device) -> bool:
    """Whether the layer should use the kernels on `device` by default: CUDA with Triton, not
    switched off."""
    return device.type == "cuda" and runnable(device)


def runnable(device: torch.device) -> bool:
    """Whether the kernels can run on `device` at all: `available`, or the CPU under Triton's
    interpreter (slow: for tests)."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or not _has_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


@functools.cache
def _has_triton() -> bool:  # asked every forward: look it up once
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get(INTERPRET_ENV, "0") == "1"


def _launch(
    kernel_name: str, x: torch.Tensor, grid: torch.Tensor, order: int,
    *args: torch.Tensor | int, blocks: tuple[int, int] = (BLOCK_N, BLOCK_I), **flags: bool | float,
) -> None:  # fmt: skip
    """Run one kernel of `basis_kernels` over x's (rows, inputs) tiles of `blocks`; `args`
    lead its list, `flags` are its other constexprs (ACT, COUNT, the scales)."""
    interpreting = not x.is_cuda
    if interpreting and not runnable(x.device):
        raise RuntimeError(
            f"fused B-spline kernels need CUDA with Triton (x is on {x.device}; "
            f"{DISABLE_ENV}={os.environ.get(DISABLE_ENV, '1')})"
        )
    from kan_engine import basis_kernels  # imports triton: only once it is known to be there

    n, n_in = x.shape
    n_knots = int(grid.shape[1])  # a constexpr: a plain int even while torch.compile traces
    block_n, block_i = blocks
    launch_grid = (-(-n // block_n), -(-n_in // block_i))  # ceil divisions
    # binary-search steps that find any of the n_knots - 1 intervals: ceil(log2(n_knots - 1))
    steps = max(1, (n_knots - 2).bit_length())
    constexprs = dict(
        ORDER=order, N_KNOTS=n_knots, SEARCH_STEPS=steps, BLOCK_N=block_n, BLOCK_I=block_i,
        **flags,
    )  # fmt: skip
    triton_launch.launch(
        getattr(basis_kernels, kernel_name), launch_grid, (*args, n, n_in), constexprs,
        NUM_WARPS, interpreting or _interpreting(),
    )  # fmt: skip


def dense_basis(
    x: torch.Tensor, grid: torch.Tensor, order: int, dtype: torch.dtype
) -> torch.Tensor:
    """Basis of x (N, in) on grid (in, M+1) -> (N, G+k, in) in `dtype`; true values (no scale)."""
    x, grid = x.contiguous(), grid.to(x.dtype).contiguous()
    n_cols = grid.shape[1] - 1 - order
    out = torch.empty(x.shape[0], n_cols, x.shape[1], device=x.device, dtype=dtype)
    plain = dict(ACT=False, COUNT=False, ACT_SCALE=1.0, BASIS_SCALE=1.0)
    _launch("basis_kernel", x, grid, order, x, grid, out, out, 1, n_cols * x.shape[1], 1, **plain)
    return out


def layer_operand(
    x: torch.Tensor, grid: torch.Tensor, order: int, dtype: torch.dtype,
    scale_base: float, scale_spline: float, outside: torch.Tensor | None = None,
    transposed: bool = False,
) -> torch.Tensor:  # fmt: skip
    """x (N, in) -> (N, (1+G+k)*in) in `dtype`, a row being scale_base * silu(x) then
    scale_spline * B(x) in the (basis function, input) order of `spline_weight.flatten(1)`: both
    branches' matmul operand side by side. `outside` (a float32 scalar tensor), when given, is
    set to the share of x outside the grid range in the same launch. `transposed`: the same
    values as ((1+G+k)*in, N) with the N values of a column adjacent, each column starting at a
    multiple of `ROW_ALIGN` elements (a view of a padded buffer), written in tiles of rows."""
    x, grid = _dense(x), _dense(grid.to(x.dtype))
    n, n_in = x.shape
    width = (grid.shape[1] - order) * n_in  # (1 + G+k) slots of n_in columns
    padded = -(-n // ROW_ALIGN) * ROW_ALIGN
    shape, strides = ((width, padded), (1, padded)) if transposed else ((n, width), (width, 1))
    out = torch.empty(shape, device=x.device, dtype=dtype)
    count = outside is not None
    if count:
        outside.zero_()
    _launch(
        "basis_kernel", x, grid, order, x, grid, out, outside if count else out,
        max(x.numel(), 1), *strides, blocks=TRANSPOSED_BLOCKS if transposed else (BLOCK_N, BLOCK_I),
        ACT=True, COUNT=count, ACT_SCALE=float(scale_base), BASIS_SCALE=float(scale_spline),
    )  # fmt: skip
    return out[:, :n] if transposed else out


def input_grad(
    grad_basis: torch.Tensor,
    x: torch.Tensor,
    grid: torch.Tensor,
    order: int,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
    grad_act: torch.Tensor | None = None,
    act_scale: float = 1.0,
) -> torch.Tensor:
    """scale * dL/dx (N, in) from dL/dB (N, G+k, in) or (N, (G+k)*in), for the basis of
    `dense_basis`; written into `out` (contiguous (N, in), e.g. a row slice of the whole
    gradient) when given. With `grad_act` (N, in), dL/d(silu(x)), its share act_scale *
    silu'(x) * grad_act is added: the input gradient of `layer_operand`'s two slots. Both
    gradients are read in place where their rows are dense (column blocks of one buffer)."""
    x, grid = _dense(x), _dense(grid.to(x.dtype))
    out = torch.empty_like(x) if out is None else out
    if not out.is_contiguous() or out.shape != x.shape:
        raise ValueError(f"input_grad: out must be contiguous {tuple(x.shape)}")
    grad_basis = _dense_rows(grad_basis.reshape(x.shape[0], -1))
    act = grad_act is not None
    grad_act = _dense_rows(grad_act) if act else x
    _launch(
        "input_grad_kernel", x, grid, order, grad_basis, grad_act, x, grid, out,
        grad_basis.stride(0), grad_act.stride(0), ACT=act, SCALE=float(scale),
        ACT_SCALE=float(act_scale),
    )  # fmt: skip
    return out


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t, contiguous (the check costs no dispatch, unlike `contiguous()`: host time)."""
    return t if t.is_contiguous() else t.contiguous()


def _dense_rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-D t whose columns are adjacent in memory, as is (rows may be further apart), or a
    contiguous copy."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous()

"""Triton matmuls whose basis operand is generated from x in registers (imported only with Triton).

The spline branch is a GEMM with the dense basis B (N, (G+k)*in) as one operand. These kernels
never store B: each K step of a tile covers BLOCK_I inputs x all G+k basis functions (padded to
COLS_P2, the next power of two, K = COLS_P2 * BLOCK_I, index c * BLOCK_I + i), so every (row,
input) value finds its interval and its k+1 non-zero values once per tile (the `_local` de Boor
helper of `basis_kernels`), scatters them into the [rows, COLS_P2, BLOCK_I] block and feeds the
flattened block to `tl.dot`. The weight tile is read with the matching column order: column
c * in + i of the (out, G+k, in) `spline_weight`.

* `forward_kernel`: out = alpha * B @ W^T + beta * base, optionally split over K into float32
  partial sums (few output tiles, long K: the layer's usual shape), with the outside-grid count
  and the basis column sums (the regulariser's statistic) folded in;
* `input_grad_kernel`: dL/dx = sum_c B_c'(x) * (dOut @ W)[:, c*in + i], the (dOut @ W) tile
  contracted with the basis slopes in registers, so dL/dB is never written either;
* `weight_grad_kernel`: dL/dW = dOut^T @ B, a GEMM over the rows whose B tile is generated.

Rows and inputs beyond the tensors' ends load x = -1 against knots 0, 1, ..., last (what `_local`
reads for masked lanes): outside the grid, so their values and slopes are exactly 0 and they add
nothing to any sum. Padding columns c >= G+k meet weight entries loaded as 0 and are masked on
store. The basis is evaluated in x's dtype (float32 or float64) and cast to the matmul dtype for
`tl.dot`, which accumulates in float32 (float64 for float64 operands).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kan_engine.basis_kernels import _local

__all__ = ["forward_kernel", "input_grad_kernel", "weight_grad_kernel"]


@triton.jit
def _cast(value, dtype: tl.constexpr):
    """value.to(dtype); float64 -> bfloat16 goes through float32 (one cast gives zeros under
    Triton's interpreter)."""
    if dtype.primitive_bitwidth < 32:
        value = value.to(tl.float32)
    return value.to(dtype)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    """acc + a @ b. WIDEN (set under Triton's interpreter for bfloat16, whose tl.dot multiplies
    the uint16 bit patterns): the operands, already rounded, are multiplied in float32, which
    gives the same products."""
    if WIDEN:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _block_values(
    x_ptr, grid_ptr, rows, cols, n_rows, n_in,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    DERIVATIVE: tl.constexpr,
):  # fmt: skip
    """x[rows, cols] and its local basis: (x, mask, first column, values, slopes)."""
    mask = (rows < n_rows)[:, None] & (cols < n_in)[None, :]
    x = tl.load(x_ptr + rows[:, None] * n_in + cols[None, :], mask=mask, other=-1.0)
    row_ptr = grid_ptr + (cols * N_KNOTS)[None, :]
    first, vals, slopes = _local(x, row_ptr, mask, ORDER, N_KNOTS, SEARCH_STEPS, DERIVATIVE)
    return x, mask, first, vals, slopes


@triton.jit
def _dense(first, vals, ORDER: tl.constexpr, COLS_P2: tl.constexpr):
    """The [rows, COLS_P2, inputs] block of the dense basis from the k+1 local values."""
    columns = tl.arange(0, COLS_P2)[None, :, None]
    offset = columns - first[:, None, :]  # r of the value that lands in each column
    block = tl.zeros((first.shape[0], COLS_P2, first.shape[1]), vals[0].dtype)
    for r in tl.static_range(ORDER + 1):
        block = tl.where(offset == r, vals[r][:, None, :], block)
    return block


@triton.jit
def _weight_columns(
    block, n_in, N_COLS: tl.constexpr, COLS_P2: tl.constexpr, BLOCK_I: tl.constexpr
):  # fmt: skip
    """(weight column c*in + i of each K index c*BLOCK_I + i of input block `block`, its mask)."""
    k = tl.arange(0, COLS_P2 * BLOCK_I)
    col, inp = k // BLOCK_I, block * BLOCK_I + k % BLOCK_I
    return col * n_in + inp, (col < N_COLS) & (inp < n_in)


@triton.jit
def forward_kernel(
    x_ptr, grid_ptr, w_ptr, base_ptr, out_ptr, count_ptr, sum_ptr,
    n_rows, n_in, n_out, alpha, beta, blocks_per_split,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
    PARTIAL: tl.constexpr, COUNT: tl.constexpr, SUM: tl.constexpr,
):  # fmt: skip
    """out[n, o] = alpha * sum_(c,i) B_c(x[n, i]) W[o, c*in + i] + beta * base[n, o].

    Program (n tile, o tile, split s) covers input blocks s*blocks_per_split onwards. PARTIAL:
    out is a float (splits, N, out) buffer, split s writes its share (split 0 adds beta * base)
    and the caller sums the splits; else out is (N, out) in its own dtype. The programs of the
    first o tile also count the inputs outside [t_k, t_{G+k}) into count_ptr (COUNT) and add
    the basis column sums into sum_ptr ((G+k)*in, x's dtype; SUM)."""
    pid_n, pid_o, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    outs = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    w_rows = w_ptr + outs.to(tl.int64)[None, :] * (n_cols * n_in)
    w_dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_O), ACC)
    start = pid_s * blocks_per_split
    stop = tl.minimum(start + blocks_per_split, tl.cdiv(n_in, BLOCK_I))
    for block in range(start, stop):
        cols = block * BLOCK_I + tl.arange(0, BLOCK_I)
        x, mask, first, vals, _ = _block_values(
            x_ptr, grid_ptr, rows, cols, n_rows, n_in, ORDER, N_KNOTS, SEARCH_STEPS, False
        )
        dense = tl.reshape(_dense(first, vals, ORDER, COLS_P2), (BLOCK_N, COLS_P2 * BLOCK_I))
        w_cols, w_mask = _weight_columns(block, n_in, n_cols, COLS_P2, BLOCK_I)
        w = tl.load(
            w_rows + w_cols[:, None], mask=w_mask[:, None] & (outs < n_out)[None, :], other=0.0
        )  # [K, BLOCK_O]
        acc = _dot(_cast(dense, w_dtype), w, acc, PRECISION, WIDEN)
        # A compile-time switch, then a branch at run time: kept apart (not `and`).
        if COUNT:  # noqa: SIM102
            if pid_o == 0:
                knots = grid_ptr + cols * N_KNOTS
                low = tl.load(knots + ORDER, mask=cols < n_in)
                high = tl.load(knots + n_cols, mask=cols < n_in)  # t_{G+k}
                outside = mask & ((x < low[None, :]) | (x >= high[None, :]))
                tl.atomic_add(count_ptr, tl.sum(outside.to(tl.int32)))
        if SUM:  # noqa: SIM102
            if pid_o == 0:
                tl.atomic_add(sum_ptr + w_cols, tl.sum(dense, 0), mask=w_mask)
    out_mask = (rows < n_rows)[:, None] & (outs < n_out)[None, :]
    tile = rows[:, None] * n_out + outs[None, :]
    base = tl.load(base_ptr + tile, mask=out_mask & (pid_s == 0), other=0.0).to(ACC)
    result = alpha * acc + beta * base
    if PARTIAL:
        tl.store(out_ptr + pid_s.to(tl.int64) * n_rows * n_out + tile, result, mask=out_mask)
    else:
        tl.store(out_ptr + tile, _cast(result, out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def input_grad_kernel(
    grad_ptr, x_ptr, grid_ptr, w_ptr, out_ptr, scale, n_rows, n_in, n_out,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """dL/dx[n, i] = scale * sum_c B_c'(x[n, i]) (dOut @ W)[n, c*in + i], for the rows of tile
    program_id(0) and the inputs of block program_id(1) (rows vary fastest: the programs that
    read one weight block run together and share it in L2)."""
    pid_n, pid_i = tl.program_id(0), tl.program_id(1)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    w_cols, w_mask = _weight_columns(pid_i, n_in, n_cols, COLS_P2, BLOCK_I)
    acc = tl.zeros((BLOCK_N, COLS_P2 * BLOCK_I), ACC)  # (dOut @ W) for these rows and columns
    for start in range(0, n_out, BLOCK_O):
        outs = start + tl.arange(0, BLOCK_O)
        g = tl.load(
            grad_ptr + rows[:, None] * n_out + outs[None, :],
            mask=(rows < n_rows)[:, None] & (outs < n_out)[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_O]
        w = tl.load(
            w_ptr + outs.to(tl.int64)[:, None] * (n_cols * n_in) + w_cols[None, :],
            mask=(outs < n_out)[:, None] & w_mask[None, :],
            other=0.0,
        )  # [BLOCK_O, K]
        acc = _dot(g, w, acc, PRECISION, WIDEN)
    x, mask, first, _, slopes = _block_values(
        x_ptr, grid_ptr, rows, cols, n_rows, n_in, ORDER, N_KNOTS, SEARCH_STEPS, True
    )
    grad_basis = tl.reshape(acc, (BLOCK_N, COLS_P2, BLOCK_I)).to(x.dtype)
    total = tl.sum(grad_basis * _dense(first, slopes, ORDER, COLS_P2), 1)  # [BLOCK_N, BLOCK_I]
    offsets = rows[:, None] * n_in + cols[None, :]
    tl.store(out_ptr + offsets, _cast(total * scale, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def weight_grad_kernel(
    grad_ptr, x_ptr, grid_ptr, out_ptr, scale, n_rows, n_in, n_out,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """dL/dW[o, c*in + i] = scale * sum_n dOut[n, o] B_c(x[n, i]) for the outputs of tile
    program_id(0) and the inputs of block program_id(1) (outputs vary fastest: the programs
    that read one block of x run together)."""
    pid_o, pid_i = tl.program_id(0), tl.program_id(1)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    outs = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    g_dtype = grad_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_O, COLS_P2 * BLOCK_I), ACC)
    for start in range(0, n_rows, BLOCK_N):
        rows = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        _, _, first, vals, _ = _block_values(
            x_ptr, grid_ptr, rows, cols, n_rows, n_in, ORDER, N_KNOTS, SEARCH_STEPS, False
        )
        dense = tl.reshape(_dense(first, vals, ORDER, COLS_P2), (BLOCK_N, COLS_P2 * BLOCK_I))
        g = tl.load(
            grad_ptr + rows[:, None] * n_out + outs[None, :],
            mask=(rows < n_rows)[:, None] & (outs < n_out)[None, :],
            other=0.0,
        )  # [BLOCK_N, BLOCK_O]
        acc = _dot(tl.trans(g), _cast(dense, g_dtype), acc, PRECISION, WIDEN)
    w_cols, w_mask = _weight_columns(pid_i, n_in, n_cols, COLS_P2, BLOCK_I)
    offsets = outs.to(tl.int64)[:, None] * (n_cols * n_in) + w_cols[None, :]
    value = _cast(acc * scale, out_ptr.dtype.element_ty)
    tl.store(out_ptr + offsets, value, mask=(outs < n_out)[:, None] & w_mask[None, :])

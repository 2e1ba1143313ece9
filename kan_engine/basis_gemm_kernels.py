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

UNIFORM (a grid whose knots are t0 + j*h per input, order 1 to 3): the operand tile is computed
element by element in its own [rows, K] layout instead, as the cardinal B-spline of order k at
s = (x - t0)/h - c in its closed piecewise-polynomial form (`_cardinal`): no search, no scatter
and no reshape of the tile, which cost more than the matmul on the general path. Its values are
the true basis (the 1/k! of the eager scheme's `local_scale` is inside the polynomials), as the
general path's are, so the two paths agree to rounding.

Rows and inputs beyond the tensors' ends load x = -1 against knots 0, 1, ..., last (what `_local`
reads for masked lanes; the uniform path sets s outside the support): outside the grid, so their
values and slopes are exactly 0 and they add nothing to any sum. Padding columns c >= G+k meet
weight entries loaded as 0 and are masked on store. The basis is evaluated in x's dtype (float32
or float64) and cast to the matmul dtype for `tl.dot`, which accumulates in float32 (float64 for
float64 operands).
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
def _k_index(block, COLS_P2: tl.constexpr, BLOCK_I: tl.constexpr):
    """(basis column c, input i) of each K index c*BLOCK_I + i of input block `block`."""
    k = tl.arange(0, COLS_P2 * BLOCK_I)
    return k // BLOCK_I, block * BLOCK_I + k % BLOCK_I


@triton.jit
def _weight_columns(
    block, n_in, N_COLS: tl.constexpr, COLS_P2: tl.constexpr, BLOCK_I: tl.constexpr
):  # fmt: skip
    """(weight column c*in + i of each K index c*BLOCK_I + i of input block `block`, its mask)."""
    col, inp = _k_index(block, COLS_P2, BLOCK_I)
    return col * n_in + inp, (col < N_COLS) & (inp < n_in)


@triton.jit
def _cardinal(d, ORDER: tl.constexpr, DERIVATIVE: tl.constexpr):
    """The cardinal B-spline of order k (support [0, k+1), true values: the 1/k! included), or
    with DERIVATIVE its slope d/ds, at s = d + (k+1)/2, for k = 1, 2, 3.

    Written in r = |d|, the distance from the centre, where each order has at most two pieces
    whose coefficients are small: no cancellation near the knots, unlike the pieces as
    polynomials in s. The slope is dB/dr times the sign of d, taken right-continuous at d = 0
    (where only order 1's slope jumps), as the interval [t_j, t_j+1) that holds a knot is on the
    general path. All constants are exact in float32: a Python float becomes a float32 constant
    in Triton, even beside a float64 tensor."""
    HALF: tl.constexpr = (ORDER + 1) / 2
    r = tl.abs(d)
    if ORDER == 1:
        value = tl.full(d.shape, -1.0, d.dtype) if DERIVATIVE else 1.0 - r
    elif ORDER == 2:
        far = 1.5 - r
        if DERIVATIVE:
            value = tl.where(r < 0.5, -2.0 * r, -far)
        else:
            value = tl.where(r < 0.5, 0.75 - r * r, 0.5 * far * far)
    else:
        far = 2.0 - r
        if DERIVATIVE:
            value = tl.where(r < 1.0, 0.5 * r * (3.0 * r - 4.0), -0.5 * far * far)
        else:
            value = tl.where(r < 1.0, 4.0 - 3.0 * r * r * far, far * far * far) / 6.0
    if DERIVATIVE:
        value = tl.where(d < 0, -value, value)
    return tl.where((d >= -HALF) & (d < HALF), value, 0.0)


@triton.jit
def _uniform_tile(
    x_ptr, grid_ptr, inv_h_ptr, rows, block, n_rows, n_in,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, COLS_P2: tl.constexpr, BLOCK_I: tl.constexpr,
    DERIVATIVE: tl.constexpr,
):  # fmt: skip
    """The [rows, K] operand tile of input block `block` on a uniform grid, computed in its own
    layout: B_c(x[n, i]) (DERIVATIVE: d/dx B_c(x[n, i]) = B'(s) / h_i) at each K index c*BLOCK_I
    + i, with x gathered per element (each value COLS_P2 times, from cache), t0_i read in place
    from the grid's first column and 1/h_i from `inv_h_ptr`. Returns (x, mask, tile) with x and
    mask [rows, K]."""
    col, inp = _k_index(block, COLS_P2, BLOCK_I)
    real = inp < n_in
    mask = (rows < n_rows)[:, None] & real[None, :]
    x = tl.load(x_ptr + rows[:, None] * n_in + inp[None, :], mask=mask, other=0.0)
    t0 = tl.load(grid_ptr + inp * N_KNOTS, mask=real, other=0.0)
    inv_h = tl.load(inv_h_ptr + inp, mask=real, other=1.0)
    HALF: tl.constexpr = (ORDER + 1) / 2
    centre = col.to(x.dtype) + HALF  # s = u - c, d = s - (k+1)/2 = u - centre
    d = (x - t0[None, :]) * inv_h[None, :] - centre[None, :]
    tile = _cardinal(tl.where(mask, d, HALF), ORDER, DERIVATIVE)  # masked: outside the support
    if DERIVATIVE:
        tile = tile * inv_h[None, :]
    return x, mask, tile


@triton.jit
def _count_outside(
    count_ptr, grid_ptr, x, mask, inputs, n_in, ORDER: tl.constexpr, N_KNOTS: tl.constexpr
):  # fmt: skip
    """Add to count_ptr the number of x[n, j] (where `mask`) outside [t_k, t_{G+k}) of input
    inputs[j]."""
    knots = grid_ptr + inputs * N_KNOTS
    low = tl.load(knots + ORDER, mask=inputs < n_in)
    high = tl.load(knots + (N_KNOTS - 1 - ORDER), mask=inputs < n_in)  # t_{G+k}
    outside = mask & ((x < low[None, :]) | (x >= high[None, :]))
    tl.atomic_add(count_ptr, tl.sum(outside.to(tl.int32)))


@triton.jit
def forward_kernel(
    x_ptr, grid_ptr, inv_h_ptr, w_ptr, base_ptr, out_ptr, count_ptr, sum_ptr,
    n_rows, n_in, n_out, alpha, beta, blocks_per_split,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr, UNIFORM: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
    PARTIAL: tl.constexpr, COUNT: tl.constexpr, SUM: tl.constexpr,
):  # fmt: skip
    """out[n, o] = alpha * sum_(c,i) B_c(x[n, i]) W[o, c*in + i] + beta * base[n, o].

    Program (n tile, o tile, split s) covers input blocks s*blocks_per_split onwards. PARTIAL:
    out is a float (splits, N, out) buffer, split s writes its share (split 0 adds beta * base)
    and the caller sums the splits; else out is (N, out) in its own dtype. The programs of the
    first o tile also count the inputs outside [t_k, t_{G+k}) into count_ptr (COUNT) and add
    the basis column sums into sum_ptr ((G+k)*in, x's dtype; SUM). UNIFORM: the basis tile by
    `_uniform_tile` (inv_h_ptr: 1/h per input); else by search and de Boor (inv_h_ptr unread)."""
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
        w_cols, w_mask = _weight_columns(block, n_in, n_cols, COLS_P2, BLOCK_I)
        if UNIFORM:
            x, mask, dense = _uniform_tile(
                x_ptr, grid_ptr, inv_h_ptr, rows, block, n_rows, n_in,
                ORDER, N_KNOTS, COLS_P2, BLOCK_I, False,
            )  # fmt: skip
            col, inputs = _k_index(block, COLS_P2, BLOCK_I)
            counted = mask & (col == 0)[None, :]  # each (row, input) once
        else:
            inputs = block * BLOCK_I + tl.arange(0, BLOCK_I)
            x, counted, first, vals, _ = _block_values(
                x_ptr, grid_ptr, rows, inputs, n_rows, n_in, ORDER, N_KNOTS, SEARCH_STEPS, False
            )
            dense = tl.reshape(_dense(first, vals, ORDER, COLS_P2), (BLOCK_N, COLS_P2 * BLOCK_I))
        w = tl.load(
            w_rows + w_cols[:, None], mask=w_mask[:, None] & (outs < n_out)[None, :], other=0.0
        )  # [K, BLOCK_O]
        acc = _dot(_cast(dense, w_dtype), w, acc, PRECISION, WIDEN)
        # A compile-time switch, then a branch at run time: kept apart (not `and`).
        if COUNT:  # noqa: SIM102
            if pid_o == 0:
                _count_outside(count_ptr, grid_ptr, x, counted, inputs, n_in, ORDER, N_KNOTS)
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
    grad_ptr, x_ptr, grid_ptr, inv_h_ptr, w_ptr, out_ptr, scale, n_rows, n_in, n_out,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr, UNIFORM: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """dL/dx[n, i] = scale * sum_c B_c'(x[n, i]) (dOut @ W)[n, c*in + i], for the rows of tile
    program_id(0) and the inputs of block program_id(1) (rows vary fastest: the programs that
    read one weight block run together and share it in L2). UNIFORM: the slopes come in the
    (dOut @ W) tile's own layout from `_uniform_tile`, one reshape sums them over c."""
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
    mask = (rows < n_rows)[:, None] & (cols < n_in)[None, :]
    if UNIFORM:
        _, _, slopes = _uniform_tile(
            x_ptr, grid_ptr, inv_h_ptr, rows, pid_i, n_rows, n_in,
            ORDER, N_KNOTS, COLS_P2, BLOCK_I, True,
        )  # fmt: skip
        terms = tl.reshape(acc.to(slopes.dtype) * slopes, (BLOCK_N, COLS_P2, BLOCK_I))
        total = tl.sum(terms, 1)  # [BLOCK_N, BLOCK_I]
    else:
        x, _, first, _, slopes = _block_values(
            x_ptr, grid_ptr, rows, cols, n_rows, n_in, ORDER, N_KNOTS, SEARCH_STEPS, True
        )
        grad_basis = tl.reshape(acc, (BLOCK_N, COLS_P2, BLOCK_I)).to(x.dtype)
        total = tl.sum(grad_basis * _dense(first, slopes, ORDER, COLS_P2), 1)
    offsets = rows[:, None] * n_in + cols[None, :]
    tl.store(out_ptr + offsets, _cast(total * scale, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def weight_grad_kernel(
    grad_ptr, x_ptr, grid_ptr, inv_h_ptr, out_ptr, scale, n_rows, n_in, n_out,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr, UNIFORM: tl.constexpr,
    COLS_P2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr, WIDEN: tl.constexpr,
):  # fmt: skip
    """dL/dW[o, c*in + i] = scale * sum_n dOut[n, o] B_c(x[n, i]) for the outputs of tile
    program_id(0) and the inputs of block program_id(1) (outputs vary fastest: the programs
    that read one block of x run together). UNIFORM: the basis tile by `_uniform_tile`."""
    pid_o, pid_i = tl.program_id(0), tl.program_id(1)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    outs = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    g_dtype = grad_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_O, COLS_P2 * BLOCK_I), ACC)
    for start in range(0, n_rows, BLOCK_N):
        rows = (start + tl.arange(0, BLOCK_N)).to(tl.int64)
        if UNIFORM:
            _, _, dense = _uniform_tile(
                x_ptr, grid_ptr, inv_h_ptr, rows, pid_i, n_rows, n_in,
                ORDER, N_KNOTS, COLS_P2, BLOCK_I, False,
            )  # fmt: skip
        else:
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

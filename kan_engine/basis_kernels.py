"""Triton kernels for the dense B-spline basis and its input gradient (imported only with Triton).

Each kernel reads a tile of x (rows x inputs) once and works on the k+1 basis functions that are
non-zero at each value: the interval comes from a binary search of the input's own knots (any
grid, uniform or refit by `update_grid`), then de Boor's triangular scheme gives the k+1 values
with k(k+1)/2 divisions per input value, not per basis entry. The basis kernel writes every entry
of its (G+k) columns (zeros included) exactly once, so the buffer needs no zeroing pass; the
gradient kernel reads the k+1 entries of dL/dB that matter and writes dL/dx once.

Knots beyond the ends of the extended grid are extrapolated with the end intervals' widths: the
functions that would use them do not exist and are never written, but their arithmetic stays
finite. All arithmetic runs in x's dtype (float32 or float64); the basis is cast to the output
buffer's dtype (the matmul dtype, bfloat16 under autocast) on store.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["basis_kernel", "input_grad_kernel"]


@triton.jit
def _knot(row_ptr, q, last: tl.constexpr, t_first, t_second, t_penult, t_last, mask):
    """Knot t_q of each input's row (q may lie beyond 0..last: extrapolated from the end
    intervals, whose knots are passed in)."""
    clamped = tl.minimum(tl.maximum(q, 0), last)
    t = tl.load(row_ptr + clamped, mask=mask, other=clamped.to(t_first.dtype))
    t = tl.where(q < 0, t_first + q * (t_second - t_first), t)
    return tl.where(q > last, t_last + (q - last) * (t_last - t_penult), t)


@triton.jit
def _local(
    x, row_ptr, mask,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    DERIVATIVE: tl.constexpr,
):  # fmt: skip
    """(first column i-k, values B_{i-k+r,k}(x), slopes d/dx B_{i-k+r,k}(x)) for r = 0..k.

    left[j-1] = x - t_{i+1-j}, right[j-1] = t_{i+j} - x (j = 1..k), as in `basis.local_basis`.
    Without DERIVATIVE the slopes tuple holds the values again (unused)."""
    last: tl.constexpr = N_KNOTS - 1
    # Masked-off lanes read knots 0, 1, ..., last: their arithmetic stays finite too.
    t_first = tl.load(row_ptr, mask=mask, other=0.0)
    t_second = tl.load(row_ptr + 1, mask=mask, other=1.0)
    t_penult = tl.load(row_ptr + last - 1, mask=mask, other=last - 1.0)
    t_last = tl.load(row_ptr + last, mask=mask, other=last * 1.0)
    # Binary search for the interval t_lo <= x < t_lo+1, clamped to 0..last-1.
    lo = tl.zeros(x.shape, tl.int32)
    hi = tl.full(x.shape, last, tl.int32)
    for _ in tl.static_range(SEARCH_STEPS):
        mid = (lo + hi) // 2
        go = x >= tl.load(row_ptr + mid, mask=mask, other=mid.to(x.dtype))
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    left = ()
    right = ()
    for j in tl.static_range(1, ORDER + 1):
        t_left = _knot(row_ptr, lo + 1 - j, last, t_first, t_second, t_penult, t_last, mask)
        t_right = _knot(row_ptr, lo + j, last, t_first, t_second, t_penult, t_last, mask)
        left = left + (x - t_left,)
        right = right + (t_right - x,)
    inside = (x >= t_first) & (x < t_last)
    vals = (tl.where(inside, 1.0, 0.0).to(x.dtype),)
    lower = vals
    for j in tl.static_range(1, ORDER + 1):
        new = ()
        saved = tl.zeros_like(x)
        for r in tl.static_range(j):
            temp = vals[r] / (right[r] + left[j - r - 1])
            new = new + (saved + right[r] * temp,)
            saved = left[j - r - 1] * temp
        lower = vals
        vals = new + (saved,)
    slopes = vals
    if DERIVATIVE:
        # B'_{j,k} = k B_{j,k-1} / (t_{j+k} - t_j) - k B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}).
        slopes = (-lower[0] * (ORDER / (right[0] + left[ORDER - 1])),)
        for r in tl.static_range(1, ORDER):
            up = lower[r - 1] * (ORDER / (right[r - 1] + left[ORDER - r]))
            down = lower[r] * (ORDER / (right[r] + left[ORDER - r - 1]))
            slopes = slopes + (up - down,)
        slopes = slopes + (lower[ORDER - 1] * (ORDER / (right[ORDER - 1] + left[0])),)
    return lo - ORDER, vals, slopes


@triton.jit
def _tile(pid_n, pid_i, n_rows, n_in, BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr):
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    cols = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    mask = (rows < n_rows)[:, None] & (cols < n_in)[None, :]
    return rows, cols, mask


@triton.jit
def basis_kernel(
    x_ptr, grid_ptr, out_ptr, outside_ptr, n_total, row_stride, col_stride, n_rows, n_in,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, ACT: tl.constexpr, COUNT: tl.constexpr,
    ACT_SCALE: tl.constexpr, BASIS_SCALE: tl.constexpr,
):  # fmt: skip
    """x (N, in), grid (in, N_KNOTS) -> out (N, G+k, in) = BASIS_SCALE * B(x), every entry
    written. With ACT, out is (N, 1+G+k, in) and its first slot holds ACT_SCALE * silu(x): the
    whole layer's matmul operand, so one launch makes both branches' inputs. With COUNT, the
    share of inputs outside the grid range (x < t_k or x >= t_{M-k}) is added to *outside_ptr
    (n_total = x.numel()): the trainer's monitoring statistic at no extra pass over x. Entry
    (row, column) of the flattened operand is at row * row_stride + column * col_stride: row
    major ((1+G+k)*in, 1), or column major (1, N) for the weight gradient's matmul on tensor
    cores, which reads the operand along its rows (`tf32x3`).

    The scales are constexprs (a layer has one pair: one compile), not float arguments: under
    torch.compile, Inductor relaunches user kernels and took a float argument of 1.0 for an
    integer (TypeError on the H200, torch 2.11)."""
    rows, cols, mask = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_in, BLOCK_N, BLOCK_I)
    x = tl.load(x_ptr + rows[:, None] * n_in + cols[None, :], mask=mask, other=0.0)
    row_ptr = grid_ptr + (cols * N_KNOTS)[None, :]
    first, vals, _ = _local(x, row_ptr, mask, ORDER, N_KNOTS, SEARCH_STEPS, False)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    out_ptrs = out_ptr + rows[:, None] * row_stride + cols[None, :] * col_stride
    slot_stride = n_in * col_stride
    out_dtype = out_ptr.dtype.element_ty
    if ACT:
        act = x / (1.0 + tl.exp(-x)) * ACT_SCALE
        if out_dtype.primitive_bitwidth < 32:
            act = act.to(tl.float32)
        tl.store(out_ptrs, act.to(out_dtype), mask=mask)
        out_ptrs += slot_stride
    if COUNT:
        low = tl.load(row_ptr + ORDER, mask=mask, other=0.0)
        high = tl.load(row_ptr + (N_KNOTS - 1 - ORDER), mask=mask, other=0.0)
        outside = mask & ((x < low) | (x >= high))
        tl.atomic_add(outside_ptr, tl.sum(tl.sum(outside.to(tl.float32), 1), 0) / n_total)
    for c in range(n_cols):
        value = tl.zeros_like(x)
        for r in tl.static_range(ORDER + 1):
            value = tl.where(first + r == c, vals[r], value)
        value = value * BASIS_SCALE
        if out_dtype.primitive_bitwidth < 32:  # float64 -> bfloat16 in one cast gives zeros
            value = value.to(tl.float32)  # under Triton's interpreter; go through float32
        tl.store(out_ptrs + c * slot_stride, value.to(out_dtype), mask=mask)


@triton.jit
def input_grad_kernel(
    grad_ptr, grad_act_ptr, x_ptr, grid_ptr, out_ptr, grad_stride, act_stride, n_rows, n_in,
    ORDER: tl.constexpr, N_KNOTS: tl.constexpr, SEARCH_STEPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_I: tl.constexpr, ACT: tl.constexpr,
    SCALE: tl.constexpr, ACT_SCALE: tl.constexpr,
):  # fmt: skip
    """dL/dB (N, G+k, in), x (N, in), grid -> dL/dx (N, in) = SCALE * sum_c dL/dB_c B_c'(x);
    with ACT, plus ACT_SCALE * silu'(x) * dL/dact, dL/dact (N, in) at grad_act_ptr: the
    gradient of both of the layer's branches in one pass. Rows of dL/dB and dL/dact are
    `grad_stride` and `act_stride` elements apart, so both can be column blocks of one
    (N, (1+G+k)*in) gradient of the layer's operand."""
    rows, cols, mask = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_in, BLOCK_N, BLOCK_I)
    offsets = rows[:, None] * n_in + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    row_ptr = grid_ptr + (cols * N_KNOTS)[None, :]
    first, _, slopes = _local(x, row_ptr, mask, ORDER, N_KNOTS, SEARCH_STEPS, True)
    n_cols: tl.constexpr = N_KNOTS - 1 - ORDER
    grad_ptrs = grad_ptr + rows[:, None] * grad_stride + cols[None, :]
    total = tl.zeros_like(x)
    for r in tl.static_range(ORDER + 1):
        column = first + r
        real = mask & (column >= 0) & (column < n_cols)
        grad = tl.load(grad_ptrs + column * n_in, mask=real, other=0.0)
        total += grad.to(x.dtype) * slopes[r]
    total = total * SCALE
    if ACT:
        act_ptrs = grad_act_ptr + rows[:, None] * act_stride + cols[None, :]
        grad_act = tl.load(act_ptrs, mask=mask, other=0.0).to(x.dtype)
        sig = 1.0 / (1.0 + tl.exp(-x))
        total += grad_act * (sig * (1.0 + x * (1.0 - sig))) * ACT_SCALE
    tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=mask)

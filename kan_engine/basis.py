"""The B-spline basis of a KAN layer, by every route the layer takes, and where each is checked.

Four routes compute the same basis (the layer's docstring says when each runs):

* the textbook Cox-de Boor recursion, `reference_basis` (in `bspline`): whole (N, in, M) tensors
  per level, the ground truth the tests compare the others with;
* the eager local scheme here, `local_basis`: only the k+1 functions that are non-zero at x, by
  de Boor's triangular scheme on the interval that holds x, scattered into a padded dense buffer
  (`padded_basis`), with their slopes for the input gradient (`local_input_grad`); `local_dense`
  gives the plain (N, in, G+k) basis of it (the grid refit uses it);
* the Triton kernels of `fused_basis` (CUDA), exact on any grid as well;
* the Triton matmuls of `basis_gemm` (CUDA, opt-in), which evaluate it tile by tile in their
  operand loads and never store it (so `basis_rows` does not serve them).

`basis_rows` is the one place the layer's fast path picks between the last two, for one chunk of
rows. Shapes: x (N, in), grid (in, M+1) with M = G + 2k intervals, k = the spline order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from kan_engine import fused_basis
from kan_engine.bspline import reference_basis

__all__ = [
    "LocalBasis",
    "as_dtype",
    "basis_row_bytes",
    "basis_rows",
    "is_uniform",
    "local_basis",
    "local_dense",
    "local_input_grad",
    "local_scale",
    "padded_basis",
    "reference_basis",
]


def is_uniform(grid: torch.Tensor) -> bool:
    """True when every row of `grid` (in, M+1) equals t0 + j*h up to rounding of the knot values."""
    steps = grid.shape[1] - 1
    t0, h = grid[:, :1], (grid[:, -1:] - grid[:, :1]) / steps
    ideal = t0 + torch.arange(steps + 1, device=grid.device, dtype=grid.dtype) * h  # (in, M+1)
    tol = 8 * torch.finfo(grid.dtype).eps * grid.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    return bool(((grid - ideal).abs() <= tol).all())


class LocalBasis(NamedTuple):
    """The k+1 non-zero basis values at each input, from `local_basis`."""

    columns: list[torch.Tensor]  # k+1 x (N, 1, in) long: padded basis column of each value
    vals: list[torch.Tensor]  # k+1 x (N, in): value_scale * B_{i-k+r}(x), r = 0..k
    slopes: list[torch.Tensor] | None  # k+1 x (N, in): slope_scale * d/dx of the same functions
    value_scale: float
    slope_scale: torch.Tensor | float  # (in,) on a uniform grid


def local_basis(
    x: torch.Tensor, grid: torch.Tensor, order: int, uniform: bool, derivative: bool
) -> LocalBasis:
    """The order+1 basis functions that are non-zero at each x (N, in), on grid (in, M+1).

    On interval i = [t_i, t_{i+1}) of the extended grid the non-zero functions are B_{i-k}..B_i.
    de Boor's triangular scheme evaluates them from left[j] = x - t_{i+1-j} and right[j] =
    t_{i+j} - x, j = 1..k. On a uniform grid these are (u + j - 1) h and (j - u) h with u the
    fractional position: the scheme runs in units of h without divisions and yields k! B (hence
    `value_scale` 1/k!). Some of the k+1 functions do not exist near the ends of the extended
    grid (j < 0 or j >= G+k): their values land in k padding columns on each side of the dense
    basis (see `padded_basis`), which is cheaper than masking them. Inputs outside the extended
    grid get all zeros (the first value starts as the inside mask; every value is linear in it).
    """
    k = order
    n_intervals = grid.shape[1] - 1  # M = G + 2k
    if uniform:
        t0 = grid[:, 0]  # (in,)
        h = (grid[:, -1] - t0) / n_intervals  # (in,)
        s = (x - t0) / h  # (N, in)
        inside = (s >= 0) & (s < n_intervals)
        # a NaN input (a diverged layer below) must give a NaN loss that the trainer handles,
        # not a NaN cast to an index out of bounds: it gets cell 0 and, not inside, no basis
        cell = torch.floor(s).nan_to_num_(0.0).clamp_(0, n_intervals - 1)
        u = (s - cell).clamp_(0, 1)  # (N, in) fractional position
        start = cell.to(torch.long)
        left = [None, u, *(u + (j - 1) for j in range(2, k + 1))]
        right = [None, *(j - u for j in range(1, k + 1))]
    else:
        interval = torch.searchsorted(grid, x.t().contiguous(), right=True).t() - 1  # (N, in)
        inside = (interval >= 0) & (interval < n_intervals)
        start = interval.clamp_(0, n_intervals - 1)
        # Knots t_{i-k+1} .. t_{i+k} through a flat view of the grid padded with k extrapolated
        # knots per side (finite, increasing), so every window read is in bounds.
        pad = torch.arange(1, k + 1, device=grid.device, dtype=grid.dtype)
        padded = torch.cat(
            [
                grid[:, :1] - (grid[:, 1:2] - grid[:, :1]) * pad.flip(0),
                grid,
                grid[:, -1:] + (grid[:, -1:] - grid[:, -2:-1]) * pad,
            ],
            dim=1,
        )  # (in, M+1+2k)
        row = torch.arange(grid.shape[0], device=grid.device) * padded.shape[1]  # (in,)
        first = start + 1 + row  # (N, in) flat index of t_{i-k+1}
        flat = padded.reshape(-1)
        window = [flat[first + p] for p in range(2 * k)]  # 2k x (N, in): t_{i-k+1+p}
        left = [None, *(x - window[k - j] for j in range(1, k + 1))]
        right = [None, *(window[k - 1 + j] - x for j in range(1, k + 1))]

    vals = [inside.to(x.dtype)]
    lower = vals
    for j in range(1, k + 1):
        new = []
        saved = None
        for r in range(j):
            temp = vals[r] if uniform else vals[r] / (right[r + 1] + left[j - r])
            if saved is None:
                new.append(right[r + 1] * temp)
            else:
                new.append(torch.addcmul(saved, right[r + 1], temp))
            saved = left[j - r] * temp
        new.append(saved)
        lower, vals = vals, new  # `lower` ends as the order k-1 values
    value_scale = local_scale(k, uniform)
    slopes = None
    slope_scale: torch.Tensor | float = 1.0
    if derivative:
        # B'_{j,k} = k B_{j,k-1} / (t_{j+k} - t_j) - k B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}); with
        # j = i-k+r these knot differences are right[r] + left[k-r+1] and right[r+1] + left[k-r]
        # (k h on a uniform grid, where the k/(k! h) factor goes into `slope_scale`).
        ups = [lower[r - 1] for r in range(1, k + 1)]  # the B_{j,k-1} term of r = 1..k
        downs = [lower[r] for r in range(k)]  # the B_{j+1,k-1} term of r = 0..k-1
        if not uniform:
            ups = [v * (k / (right[r] + left[k - r + 1])) for r, v in enumerate(ups, 1)]
            downs = [v * (k / (right[r + 1] + left[k - r])) for r, v in enumerate(downs)]
        terms = [-downs[0], *(ups[r - 1] - downs[r] for r in range(1, k)), ups[k - 1]]
        slopes = terms
        if uniform:
            slope_scale = 1.0 / (math.factorial(k - 1) * h)  # (in,)
    first_column = start.unsqueeze(1)  # (N, 1, in); padded column = interval index + r
    columns = [first_column, *(first_column + r for r in range(1, k + 1))]
    return LocalBasis(columns, vals, slopes, value_scale, slope_scale)


def padded_basis(local: LocalBasis, n_cols: int, dtype: torch.dtype) -> torch.Tensor:
    """Write the local values into a padded dense basis buffer (N, G+3k, in).

    k padding slabs sit on each side of the G+k real ones and take the values of functions that
    do not exist near the ends of the extended grid; only the real slabs are zeroed first (the
    padding is never read as basis). The real basis is `buffer[:, k:k+G+k].flatten(1)`, an
    (N, (G+k)*in) view whose rows are strided: matmuls read it in place (leading dimension
    (G+3k)*in), no copy. Columns are ordered (basis function, input), matching the (out, G+k, in)
    layout of `spline_weight`. Values carry the factor `local_scale`.
    """
    order = len(local.vals) - 1
    n, n_in = local.vals[0].shape
    buffer = torch.empty(n, n_cols + 2 * order, n_in, device=local.vals[0].device, dtype=dtype)
    buffer[:, order : order + n_cols].zero_()
    for column, value in zip(local.columns, local.vals, strict=True):
        buffer.scatter_(1, column, as_dtype(value.unsqueeze(1), dtype))
    return buffer


def local_input_grad(grad_basis: torch.Tensor, local: LocalBasis, scale: float) -> torch.Tensor:
    """scale * dL/dx (N, in) from dL/dB in a padded buffer (N, G+3k, in) whose padding slabs
    are zero."""
    total = torch.zeros_like(local.vals[0])  # (N, in)
    for column, slope in zip(local.columns, local.slopes or (), strict=False):
        picked = grad_basis.gather(1, column).squeeze(1)  # (N, in)
        total.addcmul_(as_dtype(picked, total.dtype), slope)
    factor = local.slope_scale if scale == 1.0 else local.slope_scale * scale
    if isinstance(factor, float) and factor == 1.0:  # a non-uniform grid and scale 1
        return total
    return total * factor


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t.to(dtype)` without the call where it is a no-op: a few µs of host time each, which
    add up at small shapes, where the layer is bound by host time."""
    return t if t.dtype == dtype else t.to(dtype)


def local_scale(order: int, uniform: bool) -> float:
    """The factor between `local_basis` values and the true basis (1/k! on a uniform grid)."""
    return 1.0 / math.factorial(order) if uniform else 1.0


def basis_row_bytes(
    x: torch.Tensor, grid: torch.Tensor, order: int, fused: bool, dtype: torch.dtype
) -> int:
    """Bytes of one row of the basis buffer `basis_rows` builds (the eager one is padded)."""
    n_cols = grid.shape[1] - 1 - order + (0 if fused else 2 * order)
    return n_cols * x.shape[1] * dtype.itemsize


def basis_rows(
    x: torch.Tensor, grid: torch.Tensor, order: int, uniform: bool, fused: bool,
    dtype: torch.dtype, derivative: bool,
) -> tuple[torch.Tensor, torch.Tensor, LocalBasis | None]:  # fmt: skip
    """The basis of the rows x (n, in): (its buffer, the (n, (G+k)*in) matmul operand viewing
    it, the local values the eager input gradient needs). Fused: (n, G+k, in), true values;
    eager: the padded (n, G+3k, in) buffer of `padded_basis`, values times `local_scale`."""
    n_cols = grid.shape[1] - 1 - order
    if fused:
        basis = fused_basis.dense_basis(x, grid, order, dtype)  # (n, G+k, in)
        return basis, basis.flatten(1), None
    local = local_basis(x, grid, order, uniform, derivative)
    buffer = padded_basis(local, n_cols, dtype)  # (n, G+3k, in)
    return buffer, buffer[:, order : order + n_cols].flatten(1), local


def local_dense(x: torch.Tensor, grid: torch.Tensor, order: int, uniform: bool) -> torch.Tensor:
    """Dense basis x (N, b) on `grid` (b, M+1) -> (N, b, G+k) through the fast local scheme."""
    k, n_cols = order, grid.shape[1] - 1 - order
    local = local_basis(x, grid, k, uniform, derivative=False)
    buffer = padded_basis(local, n_cols, x.dtype)  # (N, G+3k, b)
    return buffer[:, k : k + n_cols].transpose(1, 2) * local_scale(k, uniform)  # (N, b, G+k)

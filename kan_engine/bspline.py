"""The textbook B-spline basis (Cox-de Boor recursion), in two layouts of the same arithmetic.

`reference_basis` is the ground truth every faster path is checked against (and the benchmarks'
"textbook" layer): whole (N, in, M) tensors per recursion level. `column_recursion` runs the
recursion of each basis function on its own k+2 knots, broadcast over an (N, G+k, in) output:
that is the form `fused_basis` hands to torch.compile, because every op then has the output's
shape and Inductor fuses them into one kernel that writes the result once. (One tensor per basis
function, stacked at the end, made Inductor evaluate all G+k recursions for every output element:
2.4 ms for the (4096, 3136) basis on an H200, where writing it takes about 0.1 ms.)
"""

from __future__ import annotations

import torch

__all__ = ["column_recursion", "reference_basis"]


def reference_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Textbook Cox-de Boor recursion: x (N, in), grid (in, M+1) -> (N, in, M-order).

    Kept as the ground truth: the tests compare it with SciPy and the fast path with it.
    """
    x = x.unsqueeze(-1)  # (N, in, 1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)  # (N, in, M)
    for k in range(1, order + 1):
        left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)])
        right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]  # (N, in, M-k)
    return bases  # (N, in, M-order)


def column_recursion(
    x: torch.Tensor, grid: torch.Tensor, order: int, levels: int
) -> list[torch.Tensor]:
    """B_{c+r, levels}(x) for every basis column c, as order-levels+1 tensors (N, G+k, in),
    r = 0..order-levels: x (N, in), grid (in, M+1) of order `order`. `levels = order` gives the
    basis itself; `order - 1` the two lower-order functions its derivative needs."""
    n_cols = grid.shape[1] - 1 - order  # G+k
    t = grid.unfold(1, n_cols, 1).permute(1, 2, 0).unbind(0)  # k+2 x (G+k, in): t_{c+r}
    x = x.unsqueeze(1)  # (N, 1, in)
    values = [((x >= t[r]) & (x < t[r + 1])).to(x.dtype) for r in range(order + 1)]
    for j in range(1, levels + 1):
        values = [
            (x - t[r]) / (t[r + j] - t[r]) * values[r]
            + (t[r + j + 1] - x) / (t[r + j + 1] - t[r + 1]) * values[r + 1]
            for r in range(len(values) - 1)
        ]  # each (N, G+k, in)
    return values

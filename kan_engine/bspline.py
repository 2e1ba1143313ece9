"""The textbook B-spline basis (Cox-de Boor recursion): the ground truth every faster path is
checked against, and the benchmarks' "textbook" layer. Whole (N, in, M) tensors per recursion
level; plain autograd differentiates it."""

from __future__ import annotations

import torch

__all__ = ["reference_basis"]


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

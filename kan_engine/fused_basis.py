"""The dense B-spline basis and its input gradient, each as one fused kernel on CUDA.

On a GPU the eager fast path of `kan.py` (local de Boor values scattered into a padded buffer)
costs dozens of small kernels per layer and step: at batch 64 a training step is bound by kernel
launches, and at (4096, 3136->256) the elementwise passes took as long as the matmuls. Here both
elementwise halves of the layer are written as plain tensor code and handed to `torch.compile`,
whose Inductor backend fuses each into one Triton kernel that reads x (and dL/dB) once and writes
its result once:

* `dense_basis`: x (N, in) -> the (N, G+k, in) basis, already in the matmul dtype and in the
  (basis function, input) column order of `spline_weight`, so `flatten(1)` is the GEMM operand;
* `input_grad`: dL/dB (N, G+k, in) and x -> dL/dx (N, in), from the derivative formula
  B'_{j,k} = k B_{j,k-1} / (t_{j+k} - t_j) - k B_{j+1,k-1} / (t_{j+k+1} - t_{j+1}).

Both run the textbook recursion on each input's own knots (`bspline.column_recursion`, the
layout that fuses), so they are exact on any grid, uniform or refit by `update_grid`: the layer
needs no second code path for non-uniform grids. The recursion does more arithmetic than the
local scheme, which costs little in a memory-bound fused kernel and a lot in eager PyTorch,
hence: compiled on CUDA, eager elsewhere (only tests run these eagerly, to check the formulas).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch

from kan_engine.bspline import column_recursion

__all__ = ["available", "dense_basis", "input_grad"]

DISABLE_ENV = "KAN_TUI_FUSED"  # "0" turns the fused path off (debugging, A/B benchmarks)


def available(device: torch.device) -> bool:
    """Whether the compiled kernels can run on `device`: CUDA with Triton, not switched off."""
    return device.type == "cuda" and os.environ.get(DISABLE_ENV, "1") != "0" and _has_triton()


@functools.cache
def _has_triton() -> bool:  # asked every forward: look it up once
    return importlib.util.find_spec("triton") is not None


def _dense_basis(
    x: torch.Tensor, grid: torch.Tensor, order: int, dtype: torch.dtype
) -> torch.Tensor:
    return column_recursion(x, grid, order, order)[0].to(dtype)  # (N, G+k, in)


def _input_grad(
    grad_basis: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, order: int
) -> torch.Tensor:
    k, n_cols = order, grid.shape[1] - 1 - order
    low, high = column_recursion(x, grid, k, k - 1)  # (N, G+k, in): B_{c,k-1}, B_{c+1,k-1}
    t = grid.unfold(1, n_cols, 1).permute(1, 2, 0)  # (k+2, G+k, in): t_{c+r}
    slope = k * (low / (t[k] - t[0]) - high / (t[k + 1] - t[1]))  # (N, G+k, in)
    return (grad_basis.to(x.dtype) * slope).sum(1)  # (N, in)


@functools.cache
def _compiled(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    # dynamic: one kernel for every batch size and layer width, not a recompile per shape
    return torch.compile(fn, dynamic=True, fullgraph=True)


def dense_basis(
    x: torch.Tensor, grid: torch.Tensor, order: int, dtype: torch.dtype
) -> torch.Tensor:
    """Basis of x (N, in) on grid (in, M+1) -> (N, G+k, in) in `dtype`; true values (no scale)."""
    fn = _compiled(_dense_basis) if x.is_cuda else _dense_basis
    return fn(x, grid, order, dtype)


def input_grad(
    grad_basis: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, order: int
) -> torch.Tensor:
    """dL/dx (N, in) in x's dtype from dL/dB (N, G+k, in), for the basis of `dense_basis`."""
    fn = _compiled(_input_grad) if x.is_cuda else _input_grad
    return fn(grad_basis, x, grid, order)

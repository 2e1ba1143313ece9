"""The exact B-spline KAN layer: fast forward/backward, grid update, monitoring hooks.

The grid update's knot placement and least-squares refit are in `kan_engine.grid_refit`.

Output = scale_base * W_b @ act(x) + scale_spline * C @ B(x), where B(x) are the order-k B-spline
basis values of each input on its own knot vector (`grid`, G intervals extended by k knots on each
side). Shapes: x (N, in) -> B (N, G+k, in) -> flat (N, (G+k)*in) -> one matmul with
C (out, (G+k)*in). No (N, in, out, ...) intermediate is ever built.

Speed (bench/kan_layer.py, 2-core CPU, one thread, fwd+bwd): about 0.25x the textbook reference
at (1024, 784->256) and 0.5x at (256, 1024->1024) in float32, below the dense matmuls alone (the
"GEMM floor"), since the CPU's route multiplies only the non-zero basis values (`spline_gather`);
the dense route (float64, chunking) takes about 0.5x and 0.7x.

Two code paths compute the same function (their bases are in `kan_engine.basis`):

* the textbook reference (`fast=False`, and the public `b_splines`): Cox-de Boor recursion over all
  G+2k intervals to a dense basis, one matmul, plain autograd (which keeps every recursion level
  alive for backward, O(N * in * (G+k) * k) activation memory);
* the fast path (default): only the k+1 basis functions that are non-zero at x are evaluated
  (de Boor's triangular scheme on the interval that holds x), scattered into the dense basis, then
  one matmul. A custom autograd function keeps only x and recomputes the basis in backward, so
  activation memory is O(N * in). On a uniform grid the interval index and the fractional position
  come from one floor (closed form, no knot look-ups); on a non-uniform grid (after `update_grid`)
  the interval comes from `searchsorted` and the knot differences are gathered, which is still
  exact, so training never falls back to the slow path. `chunk_size` bounds the transient basis
  to `chunk_size` rows in forward and backward.

On the CPU, in float32, the fast path's matmuls multiply only the k+1 non-zero basis values of
each input (`spline_gather`, a C++ extension; its docstring says when it applies).

On CUDA the fast path's basis and input gradient are Triton kernels (`fused_basis`) around cuBLAS
matmuls; with the SiLU base (always, in the product) the whole layer is one autograd node of
`fused_layer` (both branches' operand from one kernel, one matmul per product), which at small
shapes, where the eager layer is bound by the host, costs about half the host time of the
two-node route (`_SplineLinear` beside autograd's SiLU and linear) that other activations take;
`basis_gemm=True` (or KAN_TUI_BASIS_GEMM=1) replaces that fused route by the matmuls of
`basis_gemm`, which generate the basis in their operand loads and never store it (opt-in until
it is timed on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kan_engine import basis_gemm, fused_basis, spline_gather
from kan_engine.basis import (
    as_dtype,
    basis_row_bytes,
    basis_rows,
    is_uniform,
    local_dense,
    local_input_grad,
    local_scale,
    reference_basis,
)
from kan_engine.fused_layer import FusedKAN, operand_row_bytes
from kan_engine.grid_refit import fitted_grid, refit_weights
from kan_engine.names import INITS

__all__ = ["KANLinear", "reference_basis"]

# E[silu(x)^2] for x ~ N(0, 1) (numerical integral); used to give the base branch a known variance.
SILU_SECOND_MOMENT = 0.35578
# Share of the output variance the spline branch carries at step 0, per init (the base branch
# carries the rest): "identity" makes every edge an honest linear function, "noise" only a ripple.
SPLINE_VARIANCE_SHARE = {"identity": 0.5, "noise": 0.01}
# Bound on one transient basis buffer when no chunk_size is given: rows are processed in chunks
# that fit. At (4096, 3136->256) a float32 basis is 411 MB; halving it costs the GEMMs little.
BASIS_BUDGET_BYTES = 256 * 2**20


def _chunks(n: int, rows: int) -> Iterator[slice]:
    for start in range(0, n, max(rows, 1)):
        yield slice(start, start + rows)


def _chunk_rows(chunk_size: int | None, row_bytes: int) -> int:
    """Rows per chunk: `chunk_size` if given, else as many as fit in `BASIS_BUDGET_BYTES`,
    rounded down to a multiple of 16 where that many fit: a chunk's transposed operand then
    keeps its rows 64-byte aligned, which the tensor-core matmuls of `tf32x3` need at speed
    (2378-row chunks ran them at half speed on the H200)."""
    rows = max(1, BASIS_BUDGET_BYTES // max(row_bytes, 1))
    return chunk_size or (rows if rows < 16 else rows - rows % 16)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype when autocast is on for x's device, else weight's."""
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _autocast_off(kind: str) -> AbstractContextManager[object]:
    """A context with autocast off for device type `kind`: `torch.autocast(kind, enabled=False)`
    only where autocast is on (building one costs a few µs of host time per call, which adds up
    at small shapes, where the layer is bound by host time), else a shared no-op context."""
    return torch.autocast(kind, enabled=False) if torch.is_autocast_enabled(kind) else _NO_CONTEXT


_NO_CONTEXT = nullcontext()


class _SplineLinear(torch.autograd.Function):
    """out = scale_base * base + scale_spline * B(x) @ C^T, saving only x for backward.

    The basis is rebuilt in backward (a few elementwise passes over (N, in), far less than
    keeping N * in * (G+k) values alive between forward and backward). `fused` selects the two
    Triton kernels of `fused_basis` (CUDA) instead of the eager local scheme. Rows are processed
    in chunks (`chunk_size`, or as many as keep one basis buffer within `BASIS_BUDGET_BYTES`), so
    the transient memory is bounded whatever the batch; a batch that fits in one chunk is not
    sliced at all. Autocast is handled explicitly: the basis is evaluated in float32 (or float64)
    and only the matmul operands are cast to `cdt`, the matmul dtype (`_compute_dtype`). With
    `want_sum` there is a second output: the column sum of the basis over the rows, (G+k)*in
    values (for the regulariser).

    `weight` is `spline_weight` itself, (out, G+k, in): flattening it here rather than in the
    layer keeps a view node out of the autograd graph. At small shapes the layer is bound by
    host time (Python and launches), not arithmetic, so the code here also skips what would be
    a no-op at run time: casts to the dtype a tensor has, a scale of 1, autocast contexts while
    autocast is off, row slices of a single chunk.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        base: torch.Tensor,
        weight: torch.Tensor,
        grid: torch.Tensor,
        order: int,
        uniform: bool,
        fused: bool,
        cdt: torch.dtype,
        scale_base: float,
        scale_spline: float,
        chunk_size: int | None,
        want_sum: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        work = torch.promote_types(x.dtype, torch.float32)
        base_dtype = base.dtype
        scale = 1.0 if fused else local_scale(order, uniform)
        alpha = scale_spline * scale
        n = x.shape[0]
        rows_per_chunk = _chunk_rows(chunk_size, basis_row_bytes(x, grid, order, fused, cdt))
        with _autocast_off(x.device.type):
            xw, gw = as_dtype(x, work), as_dtype(grid, work)
            w = as_dtype(weight, cdt).flatten(1)  # (out, (G+k)*in)
            base = as_dtype(base, cdt)
            if 0 < n <= rows_per_chunk:  # one chunk
                _, basis, _ = basis_rows(xw, gw, order, uniform, fused, cdt, False)
                out = torch.addmm(base, basis, w.t(), beta=scale_base, alpha=alpha)  # (N, out)
                col_sum = basis.sum(0, dtype=work) * scale if want_sum else None
            else:
                out = torch.empty(n, weight.shape[0], device=x.device, dtype=cdt)
                col_sum = None
                if want_sum:
                    col_sum = torch.zeros(w.shape[1], device=x.device, dtype=work)
                for rows in _chunks(n, rows_per_chunk):
                    _, basis, _ = basis_rows(xw[rows], gw, order, uniform, fused, cdt, False)
                    torch.addmm(
                        base[rows], basis, w.t(), beta=scale_base, alpha=alpha, out=out[rows]
                    )
                    if col_sum is not None:
                        col_sum += basis.sum(0, dtype=work) * scale
        ctx.save_for_backward(x, weight, grid)
        ctx.config = (
            order,
            uniform,
            fused,
            scale_base,
            scale_spline,
            rows_per_chunk,
            cdt,
            base_dtype,
        )
        if not want_sum:
            return out
        ctx.mark_non_differentiable(col_sum)
        ctx.set_materialize_grads(False)  # no zeros for the sum's gradient, which is never used
        return out, col_sum

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor, *_grad_sum: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, grid = ctx.saved_tensors
        order, uniform, fused, scale_base, scale_spline, rows_per_chunk, cdt, base_dtype = (
            ctx.config
        )
        need_x, need_base, need_w = ctx.needs_input_grad[:3]
        work = torch.promote_types(x.dtype, torch.float32)
        n = x.shape[0]
        grad_x = grad_base = grad_w = None
        with _autocast_off(x.device.type):
            g = as_dtype(grad_out, cdt).contiguous()  # (N, out); a sum() gives a stride-0 grad
            if need_base:
                grad_base = as_dtype(g if scale_base == 1.0 else g * scale_base, base_dtype)
            if need_x or need_w:
                xw, gw = as_dtype(x, work), as_dtype(grid, work)
                w = as_dtype(weight, cdt).flatten(1)  # (out, (G+k)*in)
                scale = scale_spline * (1.0 if fused else local_scale(order, uniform))
                g_w = g if scale == 1.0 else g * scale  # (N, out): smaller than dL/dC to scale
                single = 0 < n <= rows_per_chunk
                # dL/dx contiguous whatever x's strides: the kernel writes its rows into it
                if need_x and (fused or not single):
                    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype)
                if single:
                    grad_w, grad_rows = _chunk_grads(
                        xw, gw, g, g_w, w, grad_x, order, uniform, fused, cdt, scale_spline,
                        need_x, need_w,
                    )  # fmt: skip
                    if need_x and not fused:
                        grad_x = as_dtype(grad_rows, x.dtype)
                else:
                    for rows in _chunks(n, rows_per_chunk):
                        out_x = grad_x[rows] if need_x and fused else None
                        part, grad_rows = _chunk_grads(
                            xw[rows], gw, g[rows], g_w[rows], w, out_x, order, uniform, fused,
                            cdt, scale_spline, need_x, need_w,
                        )  # fmt: skip
                        if need_x and not fused:
                            grad_x[rows] = grad_rows
                        if need_w:
                            grad_w = as_dtype(part, work) if grad_w is None else grad_w.add_(part)
                if need_w:  # summed in the work dtype over several chunks
                    grad_w = as_dtype(as_dtype(grad_w, work), weight.dtype).view(weight.shape)
        return grad_x, grad_base, grad_w, *(None,) * 9


def _chunk_grads(
    x: torch.Tensor, grid: torch.Tensor, g: torch.Tensor, g_w: torch.Tensor, w: torch.Tensor,
    out_x: torch.Tensor | None, order: int, uniform: bool, fused: bool, cdt: torch.dtype,
    scale_spline: float, need_x: bool, need_w: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """(dL/dC (out, (G+k)*in) in `cdt`, dL/dx) of the rows x (n, in) of one chunk, from their
    dL/dOut `g` (and `g_w`, it times the basis scale), each None where not needed. The fused
    route writes dL/dx into `out_x` (a contiguous (n, in)), the eager one returns it in the
    basis's work dtype."""
    buffer, basis, local = basis_rows(x, grid, order, uniform, fused, cdt, need_x)
    part = g_w.t() @ basis if need_w else None  # (out, (G+k)*in)
    if not need_x:
        return part, None
    n_cols = grid.shape[1] - 1 - order
    if fused:
        del buffer, basis  # one buffer alive at a time
        grad_basis = (g @ w).view(-1, n_cols, x.shape[1])  # dL/dB / s
        return part, fused_basis.input_grad(grad_basis, x, grid, order, scale_spline, out_x)
    # Reuse the buffer for dL/dB; the padding slabs must read as zero.
    buffer[:, :order].zero_()
    buffer[:, order + n_cols :].zero_()
    torch.mm(g, w, out=basis)  # dL/dB / scale_spline
    return part, local_input_grad(buffer, local, scale_spline)


class KANLinear(nn.Module):
    """A Kolmogorov-Arnold layer: one learnable function phi_ij per edge, on inputs (..., in).

    phi_ij(x) = scale_base * W_b[j, i] * act(x) + scale_spline * sum_g C[j, g, i] B_g(x), with
    C = `spline_weight` stored (out, G+k, in) (basis function before input: the fast path's
    matmul operand order, so neither operand is ever transposed or copied).

    Initialisation (`init`), chosen so every layer computes a well-scaled, meaningful function at
    step 0 for inputs of about unit variance inside the grid range (the models normalise into it):

    * "identity" (default): every spline starts as a straight line, C[j, g, i] = w_ij * xi_g with
      xi_g the Greville abscissae of the knots, so sum_g C B_g(x) = w_ij * x exactly on the grid
      range (B-splines reproduce linear functions). w is LeCun-scaled and carries half of the
      output variance; the base branch carries the other half, with W_b divided by scale_base and
      by sqrt(E[silu^2]) so a strong base (scale_base 2.5) changes how fast the base branch learns,
      not the size of the output. A stack of such layers starts near a well-conditioned linear +
      SiLU network, which trains at once, unlike pure-noise splines whose signal first has to grow.
    * "noise": efficient-kan style; the splines are a small random ripple (1 % of the variance)
      and the base branch carries the output.

    `edge_mask` (out, in) bool, None by default: pruned edges (`set_edge_mask`, written by
    `kan_engine.pruning`). Where it is False, both weights are multiplied by zero in every forward,
    so a masked edge computes exactly 0 and gets no gradient, whatever the optimizer or a grid
    refit does; without a mask the forward is unchanged (one `is None` test). The mask is in the
    state dict when set, and a layer takes the stored mask (or none) when it loads a state.

    `fast=False` selects the textbook reference path (kept for tests and benchmarks). `fused`
    picks the Triton kernels of `fused_basis` (None: on CUDA when Triton is there; True on the
    CPU needs Triton's interpreter, for tests). `basis_gemm` makes that fused route the matmuls
    of `basis_gemm`, which never build the basis (None: as KAN_TUI_BASIS_GEMM says, off unless
    it is "1"); it has no effect off the fused route, nor for float64 on a GPU. `chunk_size`
    bounds the transient memory of the spline part (see `_SplineLinear`; the basis GEMM has no
    basis buffer to bound). Set `track_regularization = True` before the forwards whose
    `regularization_loss()` you want.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        base_activation: type[nn.Module] = nn.SiLU,
        grid_eps: float = 0.02,
        init: str = "identity",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        fast: bool = True,
        chunk_size: int | None = None,
        fused: bool | None = None,
        basis_gemm: bool | None = None,
    ) -> None:
        super().__init__()
        if grid_size < 1 or spline_order < 1:
            raise ValueError(
                f"KANLinear: grid_size and spline_order must be >= 1 "
                f"(got grid_size={grid_size}, spline_order={spline_order})"
            )
        if init not in INITS:
            raise ValueError(f"KANLinear: init must be one of {INITS} (got {init!r})")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"KANLinear: chunk_size must be >= 1 or None (got {chunk_size})")
        low, high = grid_range
        if not low < high:
            raise ValueError(f"KANLinear: grid_range must have low < high (got {grid_range})")
        kw = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.scale_base = scale_base
        self.scale_spline = scale_spline
        self.grid_eps = grid_eps
        self.grid_range = (float(low), float(high))  # the grid a `keep_range` update still spans
        self.init = init
        self.fast = fast
        self.chunk_size = chunk_size
        self.fused = fused
        self.basis_gemm = basis_gemm
        self.track_regularization = False
        self.base_activation = base_activation()
        h = (high - low) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1, **kw) * h + low
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())  # (in, G+2k+1)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        # Stored (out, G+k, in), so that the fast path's basis columns (basis function, input) need
        # no transpose of either matmul operand: spline_weight[j, g, i] weighs B_g on edge i -> j.
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, grid_size + spline_order, in_features, **kw)
        )
        self.register_buffer("edge_mask", None)  # (out, in) bool: False = pruned edge
        self._uniform = True
        # share of inputs outside the grid in the last training forward (-1: none yet); filled in
        # place, so a CUDA graph replaying the forward keeps it current; float32 whatever the
        # layer's dtype (`_apply`)
        self.register_buffer("_outside", torch.tensor(-1.0, device=device), persistent=False)
        self._reg_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module._grid_changed())
        self.reset_parameters()

    def _grid_changed(self) -> None:
        self._uniform = is_uniform(self.grid)

    def _apply(self, fn: Any, recurse: bool = True) -> KANLinear:
        """`.to()`, `.double()`, `.cuda()`: the grid's dtype may change, and with it whether its
        knots are uniform to that precision (float32 knots are not uniform in float64): decide
        again, as loading a state does, so a model computes the same before and after a
        checkpoint round trip. The outside share stays float32 (the forward writes a float32
        mean into it)."""
        super()._apply(fn, recurse)
        self._outside = self._outside.float()
        self._grid_changed()
        return self

    def greville(self) -> torch.Tensor:
        """Greville abscissae (in, G+k): the knot averages at which B-spline coefficients sit."""
        k = self.spline_order
        windows = self.grid.unfold(1, k, 1)[:, 1 : self.grid_size + k + 1]  # (in, G+k, k)
        return windows.mean(-1)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        share = SPLINE_VARIANCE_SHARE[self.init]
        base_std = math.sqrt((1 - share) / (self.in_features * SILU_SECOND_MOMENT))
        base_std /= max(self.scale_base, 1e-12)
        bound = math.sqrt(3) * base_std  # uniform(-b, b) has variance b^2 / 3
        nn.init.uniform_(self.base_weight, -bound, bound)
        spline_std = math.sqrt(share / self.in_features) / max(self.scale_spline, 1e-12)
        if self.init == "identity":
            slope = torch.randn_like(self.base_weight) * spline_std  # (out, in)
            self.spline_weight.copy_(slope.unsqueeze(1) * self.greville().t())  # (out, G+k, in)
        else:
            # The basis values at a point square-sum to about 1/2, hence the sqrt(2).
            nn.init.normal_(self.spline_weight, std=spline_std * math.sqrt(2))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}, "
            f"scale_base={self.scale_base}, scale_spline={self.scale_spline}, init={self.init!r}, "
            f"fast={self.fast}, fused={self.fused}, basis_gemm={self.basis_gemm}, "
            f"chunk_size={self.chunk_size}"
        )

    def masked_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(base_weight (out, in), spline_weight (out, G+k, in)) with pruned edges zeroed: the
        weights every computation of the layer's function uses."""
        mask = self.edge_mask
        if mask is None:
            return self.base_weight, self.spline_weight
        return self.base_weight * mask, self.spline_weight * mask[:, None, :]

    @torch.no_grad()
    def set_edge_mask(self, mask: torch.Tensor | None) -> None:
        """Prune the edges where `mask` (out, in) is False (None: no mask). The weights of the
        pruned edges are zeroed too, so the raw weights, the optimizer's view of them, and a
        grid refit (which fits every edge's coefficients from the old ones) all see 0 there."""
        if mask is None:
            self.edge_mask = None
            return
        shape = (self.out_features, self.in_features)
        if tuple(mask.shape) != shape:
            got = tuple(mask.shape)
            raise ValueError(f"KANLinear.set_edge_mask: mask must be {shape} (got {got})")
        self.edge_mask = mask.to(device=self.base_weight.device, dtype=torch.bool).clone()
        self._zero_masked()

    @torch.no_grad()
    def _zero_masked(self) -> None:
        mask = self.edge_mask
        if mask is not None:
            self.base_weight.mul_(mask)
            self.spline_weight.mul_(mask[:, None, :])

    def weight_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer is linear in its weights: out[n, o] = sum_i base[n, i] W_b[o, i] +
        sum_ji spline[n, j, i] W_s[o, j, i] over its unpruned edges. Returns those factors,
        (base (N, in), spline (N, G+k, in)), scales included: with the output's sensitivity
        they are the Jacobian with respect to the weights (`least_squares`)."""
        x = x.reshape(-1, self.in_features)
        base = self.scale_base * self.base_activation(x)
        dense = local_dense(x, self.grid, self.spline_order, self._uniform)  # (N, in, G+k)
        return base, self.scale_spline * dense.transpose(1, 2)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """Basis values x (N, in) -> (N, in, G+k) by the textbook recursion (the reference)."""
        return reference_basis(x.reshape(-1, self.in_features), self.grid, self.spline_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out). An (N, in) x is not reshaped: a reshape to its own shape is
        a view with a node of its own in the autograd graph, host time in forward and backward."""
        shape = x.shape
        batch_2d = len(shape) == 2
        x = x if batch_2d else x.reshape(-1, self.in_features)  # (N, in)
        k, n_cols = self.spline_order, self.grid_size + self.spline_order
        base_weight, spline_weight = self.masked_weights()
        track = self.track_regularization
        fused = self.fast and (
            (fused_basis.available(x.device) and x.dtype != torch.float64)
            if self.fused is None
            else self.fused
        )
        cdt = _compute_dtype(x, spline_weight)
        gemm = fused and (basis_gemm.enabled() if self.basis_gemm is None else self.basis_gemm)
        gemm = gemm and basis_gemm.supports(cdt, x.device)
        if fused and not gemm and type(self.base_activation) is nn.SiLU:
            out = self._fused_forward(x, base_weight, spline_weight, cdt, track)
            return out if batch_2d else out.reshape(*shape[:-1], self.out_features)
        act = self.base_activation(x)  # (N, in)
        base = F.linear(act, base_weight)  # (N, out)
        outside = None  # (1,) count of inputs outside the grid, where the spline branch gives it
        if self.fast:
            if gemm:
                flat_weight = spline_weight.view(self.out_features, -1)  # (out, (G+k)*in)
                out, col_sum, outside = basis_gemm.SplineGemm.apply(
                    x, base, flat_weight, self.grid, k, self._uniform, cdt,
                    self.scale_base, self.scale_spline, track, self.training,
                )  # fmt: skip
            elif not fused and spline_gather.applies(
                x, spline_weight, self.grid, cdt, k, self.chunk_size
            ):
                spline = spline_gather.SplineGather.apply(
                    x, base, spline_weight, self.grid, k, self.scale_base, self.scale_spline, track
                )
                out, col_sum = spline if track else (spline, None)
            else:
                spline = _SplineLinear.apply(
                    x, base, spline_weight, self.grid, k, self._uniform, fused, cdt,
                    self.scale_base, self.scale_spline, self.chunk_size, track,
                )  # fmt: skip
                out, col_sum = spline if track else (spline, None)
        else:
            basis = self.b_splines(x)  # (N, in, G+k)
            weight = spline_weight.transpose(1, 2).reshape(self.out_features, -1)
            spline = F.linear(basis.reshape(x.shape[0], -1), weight)  # (N, out)
            out = self.scale_base * base + self.scale_spline * spline
            col_sum = basis.detach().sum(0).t() if track else None  # (G+k, in)
        if self.training and outside is not None:
            torch.div(outside[0], x.numel(), out=self._outside)
        elif self.training:  # written into the buffer: no share tensor to copy, no float mask
            low, high = self.grid[:, k], self.grid[:, -k - 1]  # (in,)
            torch.mean(torch.logical_or(x < low, x >= high), dtype=torch.float32, out=self._outside)
        if track:
            with torch.no_grad():
                basis_mean = (col_sum / max(x.shape[0], 1)).view(n_cols, self.in_features)
                self._reg_stats = (act.abs().mean(0, dtype=torch.float32), basis_mean.float())
        return out if batch_2d else out.reshape(*shape[:-1], self.out_features)

    def _fused_forward(
        self, x: torch.Tensor, base_weight: torch.Tensor, spline_weight: torch.Tensor,
        cdt: torch.dtype, track: bool,
    ) -> torch.Tensor:  # fmt: skip
        """The GPU's route (`fused_layer`): the whole layer, SiLU branch, outside-grid share
        and the regulariser's statistics included, in one autograd node."""
        work = torch.promote_types(x.dtype, torch.float32)
        n_cols = self.grid_size + self.spline_order
        row_bytes = operand_row_bytes(self.in_features, n_cols, cdt)
        with _autocast_off(x.device.type):
            result = FusedKAN.apply(
                as_dtype(x, work), base_weight, spline_weight, self.grid, self.spline_order, cdt,
                self.scale_base, self.scale_spline, _chunk_rows(self.chunk_size, row_bytes),
                self._outside if self.training else None, track,
            )  # fmt: skip
        if not track:
            return result
        out, act_mean, basis_mean = result
        self._reg_stats = (act_mean, basis_mean.view(n_cols, self.in_features))
        return out

    def outside_grid_share(self) -> float:
        """Share of inputs outside the grid range in the last training forward (0.0 before one).

        Reads back from the device, so call it only when logging.
        """
        return max(float(self._outside), 0.0)

    def edge_function(self, x: torch.Tensor, out_index: int, in_index: int) -> torch.Tensor:
        """phi of the edge in_index -> out_index at points x (P,) -> (P,): what the layer adds to
        output `out_index` for input `in_index` = x. The textbook basis on that input's own knots,
        so the function follows a grid that `update_grid` has moved."""
        i, j = in_index, out_index
        x = x.to(self.grid)
        base_weight, spline_weight = self.masked_weights()
        base = self.scale_base * base_weight[j, i] * self.base_activation(x)  # (P,)
        basis = reference_basis(x[:, None], self.grid[i : i + 1], self.spline_order)  # (P, 1, G+k)
        spline = basis[:, 0] @ spline_weight[j, :, i]  # (P,)
        return base + self.scale_spline * spline

    def edge_functions(self, x: torch.Tensor) -> torch.Tensor:
        """phi of every edge at inputs x (N, in) -> (N, in, out); the forward is its sum over
        the inputs. Builds the whole (N, in, out) tensor: chunk the rows of a large x."""
        base_weight, spline_weight = self.masked_weights()
        basis = self.b_splines(x)  # (N, in, G+k)
        coeffs = self.scale_spline * spline_weight  # (out, G+k, in)
        phi = torch.einsum("sig,jgi->sij", basis, coeffs)  # (N, in, out)
        phi += self.base_activation(x)[:, :, None] * (self.scale_base * base_weight.t())
        return phi

    @torch.no_grad()
    def update_grid(
        self,
        x: torch.Tensor,
        margin: float = 0.01,
        keep_range: bool = False,
        grid_size: int | None = None,
        margin_share: float = 0.0,
    ) -> None:
        """Fit the grid to samples x (N, in) and refit the splines so the layer's function is kept.

        The new interior knots are a mix of the sample percentiles and a uniform grid over
        [min - margin, max + margin] per input (margin in input units), extended by spline_order
        uniform steps on each side; the uniform share is at least grid_eps, more where knots
        would crowd onto tied samples. `keep_range=True` widens [min, max] to include the
        constructor's `grid_range`, so a batch (whose extremes under-estimate the population's)
        never shrinks the grid: the trainer passes it. The coefficients are then refit by weighted
        least squares on the samples and on anchors over the current grid range; the base branch
        is not touched. `kan_engine.grid_refit` holds both steps and says why they are so.

        The new grid is non-uniform; the fast path handles it exactly (searchsorted + local de
        Boor). Only `spline_weight` is overwritten; `GridPolicy.refit` (kan_engine/grid_policy.py)
        says why its optimizer moments are kept.

        `margin_share` widens the margin to that share of each input's sample range where that
        is more: a fine grid fitted tight to a batch leaves the next inputs just beyond it, where
        the spline is no longer a full sum of basis functions (function fits: test RMSE 4x the
        validation RMSE at 50 intervals with none, 1.8x with 5 %).

        `grid_size` (grid extension, the KAN paper's refinement): the new grid has that many
        intervals, and the coefficients are fitted to it the same way. `spline_weight` and `grid`
        change shape in place (the Parameter object stays, so an optimizer still holds it, but
        its per-parameter state no longer fits and must be dropped).
        """
        if margin <= 0:
            raise ValueError(f"KANLinear.update_grid: margin must be > 0 (got {margin})")
        x = x.reshape(-1, self.in_features).to(self.grid.dtype)  # (N, in)
        if x.shape[0] < 2:
            raise ValueError(f"KANLinear.update_grid: need at least 2 samples (got {x.shape[0]})")
        keep = self.grid_range if keep_range else None
        size = self.grid_size if grid_size is None else grid_size
        if size < 1:
            raise ValueError(f"KANLinear.update_grid: grid_size must be >= 1 (got {size})")
        span = x.amax(0) - x.amin(0)  # (in,)
        margins = torch.clamp_min(margin_share * span, margin)
        new_grid = fitted_grid(x, size, self.spline_order, self.grid_eps, margins, keep)
        refit = refit_weights(
            x, self.grid, self._uniform, new_grid, self.spline_order, self.spline_weight
        )  # (out, G'+k, in)
        if size == self.grid_size:
            self.grid.copy_(new_grid)  # (in, G+2k+1)
            self.spline_weight.copy_(refit)
        else:
            self._resize(size)
            self.grid.copy_(new_grid)
            self.spline_weight.data = refit.to(self.spline_weight.dtype)
        self._zero_masked()  # a pruned edge's refit is 0 up to the solver's rounding: exactly 0
        self._grid_changed()

    def _resize(self, grid_size: int) -> None:
        """Give `grid` and `spline_weight` the shapes of `grid_size` intervals (contents
        undefined): grid extension, and loading a state saved after one."""
        k, weight = self.spline_order, self.spline_weight
        self.grid = torch.empty(
            self.in_features, grid_size + 2 * k + 1, dtype=self.grid.dtype, device=self.grid.device
        )
        weight.data = weight.new_empty(self.out_features, grid_size + k, self.in_features)
        self.grid_size = grid_size

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """A state saved after grid extension loads into a layer built at the first grid: the
        layer takes the stored grid's size first (in, out and order must still agree). A state
        with an edge mask (a pruned layer) gives the layer one, a state without takes it away:
        the layer built from a config has none."""
        grid = state_dict.get(prefix + "grid")
        if isinstance(grid, torch.Tensor) and grid.dim() == 2:
            size = grid.shape[1] - 2 * self.spline_order - 1
            if size >= 1 and size != self.grid_size and grid.shape[0] == self.in_features:
                self._resize(size)
        mask = state_dict.get(prefix + "edge_mask")
        if mask is None:
            self.edge_mask = None
        elif self.edge_mask is None and isinstance(mask, torch.Tensor):  # filled in by the load
            shape = (self.out_features, self.in_features)
            self.edge_mask = torch.ones(shape, dtype=torch.bool, device=self.grid.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def regularization_loss(
        self, activation_weight: float = 1.0, entropy_weight: float = 1.0
    ) -> torch.Tensor:
        """KAN-paper regulariser of the last forward: L1 of mean |phi_ij| plus their entropy.

        Exact mean |phi_ij(x)| over the batch needs an (N, in, out) tensor; instead we use the
        triangle-inequality bound scale_base |W_b[j,i]| mean|act(x_i)| + scale_spline
        sum_g |C[j,i,g]| mean B_g(x_i) (B_g >= 0), which is exact when an edge's terms share a
        sign on the batch and costs O(in * out * (G+k)). The batch means are taken in the forward
        (only while `track_regularization` is True) and are constants here: the gradient reaches
        the weights, the thing the regulariser is meant to shrink, not the inputs.
        """
        if self._reg_stats is None:
            raise RuntimeError(
                "KANLinear.regularization_loss: no statistics from a forward; set "
                "layer.track_regularization = True before the forward (the trainer does this "
                "when its regularisation weight is > 0)"
            )
        act_mean, basis_mean = self._reg_stats  # (in,), (G+k, in)
        base_weight, spline_weight = self.masked_weights()
        base = self.scale_base * base_weight.abs() * act_mean  # (out, in)
        spline = self.scale_spline * (spline_weight.abs() * basis_mean).sum(1)  # (out, in)
        magnitude = base + spline  # (out, in)
        total = magnitude.sum()
        p = magnitude / total.clamp_min(1e-12)
        entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
        return activation_weight * total + entropy_weight * entropy

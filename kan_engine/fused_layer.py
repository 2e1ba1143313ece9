"""The whole KAN layer on a GPU as one autograd node: one Triton launch per direction.

At small shapes the layer is bound by the host, not the GPU: an eager fwd+bwd at (1024,
784->256) replays from a CUDA graph in 0.4 ms of GPU time but took 1.36 ms of wall time, which
was the time to launch about 20 kernels (the SiLU, its matmul, the basis, the spline matmul, four
ops of the outside-grid statistic, their backward twins, the gradient sum of x's two branches)
and to run four autograd nodes. Here one kernel (`fused_basis.layer_operand`) writes both
branches' matmul operand, [silu(x) | B(x)] as (N, (1+G+k)*in), and
adds the outside-grid share in the same pass; one matmul multiplies it by the joined weights
[`base_weight` | `spline_weight`]. Backward rebuilds the operand (only x is kept, as in
`kan._SplineLinear`: activation memory O(N * in)), takes dL/dW (both weights' gradients, as
views) and dL/dOperand with two matmuls, and one kernel (`fused_basis.input_grad` with the SiLU
term) reads both halves of dL/dOperand in place and writes dL/dx.

In float32 the products that bind the GPU run on tensor cores at float32's accuracy (`tf32x3`),
which reads both operands with the summed index adjacent: the backward then rebuilds the operand
transposed for dL/dW and takes a copy of the joined weight with the outputs adjacent for
dL/dOperand (cuBLAS reads any layout, and keeps the products that do not bind the GPU).

Rows are processed in chunks whose operand fits in `BASIS_BUDGET_BYTES`, as in the other routes.
Base activations other than SiLU (a library user's choice) take `kan._SplineLinear`.
"""

from __future__ import annotations

import torch

from kan_engine import fused_basis, tf32x3
from kan_engine.basis import as_dtype

__all__ = ["FusedKAN", "operand_row_bytes"]


def operand_row_bytes(n_in: int, n_cols: int, dtype: torch.dtype) -> int:
    """Bytes of one row of the (N, 1+G+k, in) operand."""
    return (1 + n_cols) * n_in * dtype.itemsize


def _rows(n: int, per_chunk: int) -> list[slice]:
    """The row slices of the chunks; one chunk is the whole batch (no slicing: host time)."""
    if n <= per_chunk:
        return [slice(None)]
    return [slice(start, start + per_chunk) for start in range(0, n, per_chunk)]


class FusedKAN(torch.autograd.Function):
    """out = scale_base * silu(x) @ W_b^T + scale_spline * B(x) @ C^T, saving only x (and the
    joined weight, which is the weights' size).

    `cdt` is the matmul dtype (the autocast dtype under autocast), in which `out` is returned;
    the operand is built from x in its own dtype (float32 or float64), scales included, and
    stored in `cdt`. The two weights are joined into one (out, (1+G+k)*in) matrix, so that each
    direction's product is one matmul: one in forward, two in backward (dL/dW, dL/dOperand);
    the weights' gradients are views of dL/dW (autograd lays them out as the weights). `outside`,
    a float32 scalar buffer or None, receives the share of x outside the grid range (training).
    With `want_stats` two more outputs, not differentiable: mean |silu(x)| (in,) and the basis's
    column means ((G+k)*in,), float32, for the regulariser.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        base_weight: torch.Tensor,
        spline_weight: torch.Tensor,
        grid: torch.Tensor,
        order: int,
        cdt: torch.dtype,
        scale_base: float,
        scale_spline: float,
        rows_per_chunk: int,
        outside: torch.Tensor | None,
        want_stats: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, n_in = x.shape
        n_out = base_weight.shape[0]
        weight = torch.cat(
            [as_dtype(base_weight, cdt), as_dtype(spline_weight, cdt).view(n_out, -1)], 1
        ).t()  # ((1+G+k)*in, out)
        # the operand's and the weight's rows as they are: 64-byte aligned only where both
        # widths are multiples of 16 elements, which the tensor-core kernel needs at speed
        tensor_cores = tf32x3.allowed(cdt, x.device) and weight.shape[0] % 16 == n_out % 16 == 0
        chunks = _rows(n, rows_per_chunk)
        single = len(chunks) == 1
        out = None if single else torch.empty(n, n_out, device=x.device, dtype=cdt)
        sums = None
        for rows in chunks:
            flat = fused_basis.layer_operand(
                x if single else x[rows], grid, order, cdt, scale_base, scale_spline,
                outside if single else None,
            )  # (n, (1+G+k)*in)  # fmt: skip
            if single:
                out = _product(flat, weight, None, tensor_cores)
            else:
                _product(flat, weight, out[rows], tensor_cores)
            if want_stats:
                chunk_sums = torch.cat([flat[:, :n_in].abs().sum(0, dtype=torch.float32),
                                        flat[:, n_in:].sum(0, dtype=torch.float32)])  # fmt: skip
                sums = chunk_sums if sums is None else sums.add_(chunk_sums)
        if not single and outside is not None:  # the share of the whole batch
            low, high = grid[:, order], grid[:, -order - 1]
            torch.mean(torch.logical_or(x < low, x >= high), dtype=torch.float32, out=outside)
        ctx.save_for_backward(x, weight, grid)
        ctx.config = (order, cdt, scale_base, scale_spline, rows_per_chunk, tensor_cores)
        ctx.weight_dtypes = (base_weight.dtype, spline_weight.dtype, spline_weight.shape)
        if not want_stats:
            return out
        act_mean = _unscaled(sums[:n_in], abs(scale_base), n)  # sums of |scale * silu|
        basis_mean = _unscaled(sums[n_in:], scale_spline, n)
        ctx.mark_non_differentiable(act_mean, basis_mean)
        ctx.set_materialize_grads(False)  # no zeros for the statistics' gradients (never used)
        return out, act_mean, basis_mean

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor, *_grad_stats: None
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, grid = ctx.saved_tensors
        order, cdt, scale_base, scale_spline, rows_per_chunk, tensor_cores = ctx.config
        base_dtype, spline_dtype, spline_shape = ctx.weight_dtypes
        need_x, need_wb, need_ws = ctx.needs_input_grad[:3]
        n, n_in = x.shape
        g = as_dtype(grad_out, cdt).contiguous()  # (N, out); a sum() gives a stride-0 grad
        grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype) if need_x else None
        grad_w = None
        weight_k = None  # the weight with the output index adjacent (`tf32x3`), made once
        for rows in _rows(n, rows_per_chunk):
            whole = rows == slice(None)
            part, g_part = (x, g) if whole else (x[rows], g[rows])
            width = weight.shape[0]
            if need_wb or need_ws:
                config = _tiles(tensor_cores, g.shape[1], width, part.shape[0], x.device)
                flat = fused_basis.layer_operand(
                    part, grid, order, cdt, scale_base, scale_spline, transposed=config is not None
                )  # fmt: skip
                if config is None:
                    grad_w = _accumulate(grad_w, g_part.t(), flat)  # (out, (1+G+k)*in)
                else:  # both operands with the rows (the sum's index) adjacent
                    grad_w = tf32x3.matmul(
                        tf32x3.row_major(g_part.t()), flat.t(), config, grad_w, grad_w is not None
                    )  # fmt: skip
                del flat  # one operand alive at a time
            if need_x:
                config = _tiles(tensor_cores, part.shape[0], width, g.shape[1], x.device)
                if config is None:
                    grad_flat = torch.mm(g_part, weight.t())  # (n, (1+G+k)*in)
                else:
                    weight_k = tf32x3.row_major(weight).t() if weight_k is None else weight_k
                    grad_flat = tf32x3.matmul(g_part, weight_k, config)
                fused_basis.input_grad(
                    grad_flat[:, n_in:], part, grid, order, scale_spline,
                    grad_x if whole else grad_x[rows], grad_flat[:, :n_in], scale_base,
                )  # fmt: skip
        grad_wb = as_dtype(grad_w[:, :n_in], base_dtype) if need_wb else None
        grad_ws = as_dtype(grad_w[:, n_in:], spline_dtype).view(spline_shape) if need_ws else None
        return grad_x, grad_wb, grad_ws, *(None,) * 8


def _tiles(tensor_cores: bool, m: int, n: int, k: int, device: torch.device) -> tf32x3.Tiles | None:
    """The tensor-core configuration of an (m, k) @ (k, n) product, or None for cuBLAS."""
    return tf32x3.tiles(m, n, k, device) if tensor_cores else None


def _product(
    operand: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None, tensor_cores: bool
) -> torch.Tensor:
    """operand @ weight into `out` (a new tensor when None): on tensor cores where `tf32x3`
    takes the shape, else cuBLAS."""
    m, k = operand.shape
    config = _tiles(tensor_cores, m, weight.shape[1], k, operand.device)
    if config is not None:
        return tf32x3.matmul(operand, weight, config, out)
    return torch.mm(operand, weight) if out is None else torch.mm(operand, weight, out=out)


def _unscaled(sums: torch.Tensor, scale: float, n: int) -> torch.Tensor:
    """Column means of the true values from the sums over n rows of scale * values; a branch
    with scale 0 contributes nothing to the regulariser, so its (undefined) means are zeros."""
    if scale == 0.0:
        return torch.zeros_like(sums)
    return sums / (scale * max(n, 1))


def _accumulate(
    total: torch.Tensor | None, g_t: torch.Tensor, operand: torch.Tensor
) -> torch.Tensor:
    """total + g^T @ operand; a second chunk adds in float32 at least, whatever the matmul
    dtype, so that summing chunks in bfloat16 does not lose what a single chunk would keep."""
    part = torch.mm(g_t, operand)
    if total is None:
        return part
    total = as_dtype(total, torch.promote_types(total.dtype, torch.float32))
    return total.add_(part)

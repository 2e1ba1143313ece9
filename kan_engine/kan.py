"""The B-spline KAN layer (first, reference version; the KAN-layer work replaces its internals).

Output = scale_base * W_b @ silu(x) + scale_spline * C @ B(x), where B(x) are the B-spline basis
values of each input on its own grid. Shapes: x (N, in) -> B (N, in, G+k) -> flat (N, in*(G+k)) ->
one matmul with C (out, in*(G+k)). No (N, in, out, ...) intermediate is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KANLinear(nn.Module):
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
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.grid_size = grid_size
        self.spline_order = spline_order
        self.scale_base = scale_base
        self.scale_spline = scale_spline
        self.grid_eps = grid_eps
        self.base_activation = base_activation()
        low, high = grid_range
        h = (high - low) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1, **kw) * h + low
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())  # (in, G+2k+1)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.spline_weight = nn.Parameter(
            torch.empty(out_features, in_features, grid_size + spline_order, **kw)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / (self.in_features**0.5)
        nn.init.uniform_(self.base_weight, -bound, bound)
        with torch.no_grad():
            nn.init.uniform_(self.spline_weight, -0.1 * bound, 0.1 * bound)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """Cox-de Boor recursion: x (N, in) -> (N, in, G+k)."""
        grid = self.grid  # (in, G+2k+1)
        x = x.unsqueeze(-1)  # (N, in, 1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)  # (N, in, G+2k)
        for k in range(1, self.spline_order + 1):
            left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)])
            right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:-k])
            bases = left * bases[..., :-1] + right * bases[..., 1:]  # (N, in, G+2k-k)
        return bases  # (N, in, G+k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)  # (N, in)
        base = F.linear(self.base_activation(x), self.base_weight)  # (N, out)
        basis = self.b_splines(x).reshape(x.shape[0], -1)  # (N, in*(G+k))
        spline = F.linear(basis, self.spline_weight.reshape(self.out_features, -1))  # (N, out)
        out = self.scale_base * base + self.scale_spline * spline
        return out.reshape(*shape[:-1], self.out_features)

"""The normal equations of a model's least-squares fit, JᵀJ and Jᵀr, for Levenberg-Marquardt.

Every output row of these models depends on its own input row only, so the Jacobian of the
residuals is a stack of per-sample Jacobians, and two routes build it without one backward per
residual:

* KAN layers only (`flat_kan`): a layer is linear in its weights (`KANLinear.weight_features`),
  so the Jacobian's entry for weight (o, i) of a layer at sample n is the sensitivity of the
  network's output t to that layer's output o at sample n times the feature of input i, and the
  sensitivities of every layer come from one backward per output of an ordinary forward. At
  the function preset's [2, 1, 1] this takes a third of the time of the route below at G = 50.
* anything else (`flat_mlp`, ...): `torch.func.vmap` over samples of `jacrev` over the
  parameters, run on the layers' reference basis (`KANLinear.fast` off: plain tensor code that
  vmap can batch; the fast path's autograd Function has no batching rule) in eval mode (the
  training-only statistics write into buffers, which a vmapped forward cannot do).

Rows of J are made in chunks of at most `JACOBIAN_BUDGET_BYTES`; only the P x P system is kept.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from kan_engine.kan import KANLinear

__all__ = ["JACOBIAN_BUDGET_BYTES", "NormalEquations", "normal_equations", "unbatched_path"]

JACOBIAN_BUDGET_BYTES = 64 * 2**20


class NormalEquations(NamedTuple):
    """Of the residuals r = (f(x) - y) / sqrt(M) over all M = rows x outputs values, so that
    |r|^2 is the mean squared error: `jtj` JᵀJ (P, P), `jtr` Jᵀr (P,), `loss` |r|^2, and
    `errors` f(x) - y (N, T) themselves (a step's statistics come from them, not from another
    forward)."""

    jtj: Tensor
    jtr: Tensor
    loss: Tensor
    errors: Tensor


def normal_equations(
    model: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor
) -> NormalEquations:
    """JᵀJ and Jᵀr of `model`'s residuals on (x (N, ...), y (N, T)) with respect to `params`
    (flattened in their order, as `parameters_to_vector` does)."""
    owners = _kan_owners(model)
    if all(id(p) in owners for p in params):
        return _by_sensitivities(model, owners, params, x, y)
    return _per_sample(model, params, x, y)


class _System:
    """Accumulates JᵀJ and Jᵀr chunk by chunk."""

    def __init__(self, size: int, n: int, outputs: int, like: Tensor) -> None:
        self.scale = 1.0 / math.sqrt(max(n * outputs, 1))
        self.jtj = torch.zeros(size, size, dtype=like.dtype, device=like.device)
        self.jtr = torch.zeros(size, dtype=like.dtype, device=like.device)
        self.rows = max(1, JACOBIAN_BUDGET_BYTES // max(size * outputs * like.element_size(), 1))

    def add(self, j: Tensor, r: Tensor) -> None:
        """J rows (m, P) and their scaled residuals (m,)."""
        self.jtj.addmm_(j.t(), j)
        self.jtr.addmv_(j.t(), r.to(j.dtype))

    def done(self, errors: Tensor) -> NormalEquations:
        r = errors * self.scale
        return NormalEquations(self.jtj, self.jtr, r.square().sum(), errors)


def _kan_owners(model: nn.Module) -> dict[int, tuple[KANLinear, str]]:
    """id of each KAN weight -> (its layer, which weight); empty if the model trains anything
    else (then the layers' linearity does not give the whole Jacobian)."""
    owners = {
        id(getattr(layer, name)): (layer, name)
        for layer in model.modules()
        if isinstance(layer, KANLinear)
        for name in ("base_weight", "spline_weight")
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    return owners if all(id(p) in owners for p in trainable) else {}


def _by_sensitivities(
    model: nn.Module,
    owners: dict[int, tuple[KANLinear, str]],
    params: list[nn.Parameter],
    x: Tensor,
    y: Tensor,
) -> NormalEquations:
    layers = list(dict.fromkeys(layer for layer, _ in owners.values()))
    seen: dict[KANLinear, tuple[Tensor, Tensor]] = {}

    def record(layer: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        seen[layer] = (args[0].detach(), out)  # type: ignore[index]

    hooks = [layer.register_forward_hook(record) for layer in layers]
    n, outputs = y.shape
    try:
        with torch.enable_grad():  # the optimizer steps under no_grad
            out = model(x)  # (N, T)
            hidden = [seen[layer][1] for layer in layers]
            sensitivities = [  # per output t: d out[:, t] / d (each layer's output), (N, out_l)
                torch.autograd.grad(out[:, t].sum(), hidden, retain_graph=True, allow_unused=True)
                for t in range(outputs)
            ]
    finally:
        for hook in hooks:
            hook.remove()
    features = {layer: layer.weight_features(seen[layer][0]) for layer in layers}
    deltas = {  # (N, T, out) per layer
        layer: torch.stack([_zeros_if_none(s[k], seen[layer][1]) for s in sensitivities], 1)
        for k, layer in enumerate(layers)
    }
    system = _System(sum(p.numel() for p in params), n, outputs, x)
    errors = (out.detach() - y).to(x.dtype)
    for start in range(0, n, system.rows):
        rows = slice(start, start + system.rows)
        blocks = []
        for p in params:
            layer, name = owners[id(p)]
            delta = deltas[layer][rows]  # (m, T, out)
            base, spline = features[layer]
            mask = layer.edge_mask
            if name == "base_weight":  # (m, T, out, in)
                block = delta[..., None] * base[rows, None, None, :]
                block = block if mask is None else block * mask
            else:  # (m, T, out, G+k, in)
                block = delta[..., None, None] * spline[rows, None, None]
                block = block if mask is None else block * mask[:, None, :]
            blocks.append(block.reshape(delta.shape[0] * outputs, -1))
        system.add(torch.cat(blocks, 1) * system.scale, errors[rows].reshape(-1) * system.scale)
    return system.done(errors)


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    """A layer that no output depends on has sensitivity zero (autograd gives None)."""
    return torch.zeros_like(like) if grad is None else grad.detach()


@contextlib.contextmanager
def unbatched_path(model: nn.Module) -> Iterator[None]:
    """KAN layers on their reference basis and the model in eval mode, restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, KANLinear)]
    fast = [layer.fast for layer in layers]
    training = model.training
    for layer in layers:
        layer.fast = False
    model.eval()
    try:
        yield
    finally:
        for layer, was in zip(layers, fast, strict=True):
            layer.fast = was
        model.train(training)


def _per_sample(
    model: nn.Module, params: list[nn.Parameter], x: Tensor, y: Tensor
) -> NormalEquations:
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for p in params]
    values = {name: p.detach() for name, p in zip(order, params, strict=True)}
    n, outputs = y.shape
    system = _System(sum(p.numel() for p in params), n, outputs, x)

    def residual(weights: dict[str, Tensor], xi: Tensor, yi: Tensor) -> tuple[Tensor, Tensor]:
        r = functional_call(model, weights, (xi.unsqueeze(0),))[0] - yi
        return r, r

    jacobian = vmap(jacrev(residual, has_aux=True), in_dims=(None, 0, 0))
    errors = []
    with unbatched_path(model):
        for start in range(0, n, system.rows):
            part, r = jacobian(
                values, x[start : start + system.rows], y[start : start + system.rows]
            )
            j = torch.cat([part[name].reshape(r.numel(), -1) for name in order], 1)  # (m, P)
            system.add(j * system.scale, r.reshape(-1) * system.scale)
            errors.append(r)
    return system.done(torch.cat(errors))

"""Which edges and nodes of a KAN matter, and a smaller KAN without the rest.

Edge magnitude. E_l[j, i] = mean |phi_ij| over the inputs layer l really sees (the activation
viewer's `edge_importance`, on the training split's first batches run through the model). The
mean of |phi|, not its spread as in pykan 0.2: removing an edge changes node j by exactly
phi_ij, constant part included, so mean |phi_ij| is the size of the change a prune makes.

Attribution (pykan's backward scheme, on these magnitudes). Every output starts with score 1;
an edge i -> j gets node j's score times its share of the magnitude arriving at j,
A_l[j, i] = s_{l+1}[j] * E_l[j, i] / sum_i' E_l[j, i'], and a node's score is the sum over its
outgoing edges, s_l[i] = sum_j A_l[j, i]. So what flows into a node equals what flows out of it
(incoming and outgoing importance are one number), and a large edge into a node that nothing
downstream reads scores low: layer-by-layer magnitudes alone would keep it.

Scale. A layer's scores add up to the number of outputs, however wide it is, so a wide layer's
edges are each small. Thresholds are therefore read against each layer's strongest: edge scores
are divided by the layer's largest edge score, node scores by its largest node score, and T = 0.05
means "below 5 % of the strongest in its layer" in every layer alike.

Pruning. An edge below T is masked (`KANLinear.set_edge_mask`: it computes exactly 0, during
fine-tuning too). A hidden node below T, or left with no outgoing edge, is removed with all its
edges, from the last hidden layer back (a removal can leave a node before it without readers);
the layers around it are sliced, so the model is genuinely smaller. A node whose incoming
edges are all masked but whose outgoing ones are not is kept: it feeds its readers a constant.
The pruned model is the masked original with dead nodes cut out, so on any input it computes
the same function as the original with `PruneResult.masks` applied. Inputs and outputs are never
removed (the data fixes them); inputs' scores are the input attribution.

What magnitudes cannot see: contributions that cancel further on. With every edge starting as
a line (`init="identity"`), an input the target ignores keeps sizeable edges into the hidden
layer whose effects cancel at the outputs; it is not scored near 0 (y = sin(pi x1) + 0.01 x2 on a
[2, 6, 1] KAN: x2 scores 0.12-0.39 over 4 seeds). The KAN paper trains with its sparsity
regulariser before pruning for this reason: with `kan.reg_weight` 0.003, x2 scores 0.04-0.23.
On digits, at equal edges per layer, these scores and plain per-layer magnitudes prune to the
same accuracy (within 1.4 points at T <= 0.2, no consistent winner); the attribution is what
scores nodes.

Node removal needs KAN layers with nothing per-node between them (`flat_kan`, the `kan`
baseline: Identity norms on a flattened input). Elsewhere (a CNN front end, BatchNorm between
layers) `prune(..., nodes=False)` masks edges only, and the widths stay.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kan_engine.activations import edge_importance
from kan_engine.errors import ConfigError
from kan_engine.kan import KANLinear
from kan_engine.models import KanClassifier

__all__ = [
    "Attribution",
    "PruneResult",
    "attribute",
    "check_threshold",
    "input_names",
    "kan_stack",
    "layer_inputs",
    "live_edges",
    "nodes_removable",
    "prune",
    "rank_inputs",
]

TINY = 1e-30  # a node with no incoming magnitude gives its edges share 0, not NaN


@dataclass(frozen=True)
class Attribution:
    """Scores of a KAN stack, each divided by the largest of its layer (so in [0, 1])."""

    edges: list[Tensor]  # per KAN layer: (out, in)
    nodes: list[Tensor]  # per node layer, inputs to outputs: (width,)


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and what was kept of the original."""

    model: nn.Module  # a new model; the original is left as it was
    attribution: Attribution  # the original's scores
    masks: list[Tensor]  # per KAN layer of the original: (out, in) edges kept (bool)
    kept_nodes: list[Tensor]  # per node layer of the original: indices kept
    threshold: float

    @property
    def widths_before(self) -> list[int]:
        return [len(nodes) for nodes in self.attribution.nodes]

    @property
    def widths_after(self) -> list[int]:
        return [len(kept) for kept in self.kept_nodes]

    @property
    def edges_kept(self) -> int:
        return sum(int(mask.sum()) for mask in self.masks)

    def summary(self, edges_before: int) -> str:
        """`kept 7 of 12 edges, hidden width 5 -> 2` (edges_before: the original's live edges)."""
        before, after = self.widths_before[1:-1], self.widths_after[1:-1]
        hidden = ""
        if before:
            plural = "s" if len(before) > 1 else ""
            hidden = (
                f", hidden width{plural} {', '.join(map(str, before))} -> "
                f"{', '.join(map(str, after))}"
            )
        return f"kept {self.edges_kept} of {edges_before} edges{hidden}"


def kan_stack(model: nn.Module, name: str = "") -> list[KANLinear]:
    """The KAN layers of a model that is a stack of them (`KanClassifier`), in order;
    ConfigError naming the model otherwise."""
    if not isinstance(model, KanClassifier):
        label = repr(name) if name else type(model).__name__
        raise ConfigError("", "model.name", f"model {label} has no KAN layers to prune")
    return list(model.kan)


def nodes_removable(model: nn.Module) -> bool:
    """Whether hidden nodes can be cut out: KAN layers on a flattened input with nothing
    per-node (a norm's statistics) between them."""
    return (
        isinstance(model, KanClassifier)
        and isinstance(model.front, nn.Flatten)
        and all(isinstance(norm, nn.Identity) for norm in model.norms)
    )


def live_edges(model: nn.Module) -> int:
    """Edges of the model's KAN stack that are not masked."""
    return sum(
        layer.in_features * layer.out_features
        if layer.edge_mask is None
        else int(layer.edge_mask.sum())
        for layer in kan_stack(model)
    )


@torch.no_grad()
def layer_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """What each KAN layer of the stack receives when the model (in eval mode) runs on x:
    per layer (N, in)."""
    layers = kan_stack(model)
    seen: list[Tensor] = [x.new_empty(0)] * len(layers)

    def keep(index: int) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
            seen[index] = args[0].reshape(-1, layers[index].in_features).detach()

        return hook

    handles = [layer.register_forward_pre_hook(keep(n)) for n, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def attribute(layers: Sequence[KANLinear], inputs: Sequence[Tensor | None]) -> Attribution:
    """Backward attribution of a stack (see the module docstring); `inputs[l]` is what layer l
    receives (N, in), None for a uniform sample of its grid range (no data at hand)."""
    magnitudes = [edge_importance(layer, x) for layer, x in zip(layers, inputs, strict=True)]
    node = torch.ones(layers[-1].out_features, dtype=magnitudes[-1].dtype)
    edges: list[Tensor] = []
    nodes = [node]
    for magnitude in reversed(magnitudes):
        magnitude = magnitude.cpu()  # (out, in)
        share = magnitude / magnitude.sum(1, keepdim=True).clamp_min(TINY)
        scores = share * node[:, None]  # (out, in)
        node = scores.sum(0)  # (in,)
        edges.insert(0, scores)
        nodes.insert(0, node)
    return Attribution([_by_largest(e) for e in edges], [_by_largest(n) for n in nodes])


def _by_largest(scores: Tensor) -> Tensor:
    top = scores.max()
    return scores / top if top > 0 else scores


def check_threshold(threshold: float) -> float:
    """T as a plain float: a number >= 0 (NaN, infinities and negatives are refused)."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ConfigError("", "--threshold", f"must be a number >= 0 (got {threshold})")
    return float(threshold)


@dataclass(frozen=True)
class _Plan:
    masks: list[Tensor]  # per KAN layer (out, in): edges kept
    kept: list[Tensor]  # per node layer: bool (width,)
    problem: str  # why this threshold leaves no working network ("" when it does)


def _plan(layers: Sequence[KANLinear], scores: Attribution, threshold: float, nodes: bool) -> _Plan:
    """What `threshold` keeps: edges at or above it (and not masked before), then hidden
    nodes (with `nodes`) at or above it that still have an outgoing edge, last layer first.
    It breaks the network when a hidden layer loses every node or an output no longer
    depends on any input (it would be a constant)."""
    masks = []
    for layer, edge in zip(layers, scores.edges, strict=True):
        kept = edge >= threshold
        if layer.edge_mask is not None:
            kept &= layer.edge_mask.cpu()
        masks.append(kept)
    kept_nodes = [torch.ones(len(n), dtype=torch.bool) for n in scores.nodes]
    if nodes:
        for at in range(len(layers) - 1, 0, -1):  # node layer `at`: rows of at-1, columns of at
            alive = (scores.nodes[at] >= threshold) & masks[at].any(0)
            kept_nodes[at] = alive
            masks[at][:, ~alive] = False
            masks[at - 1][~alive, :] = False
            if not alive.any():
                return _Plan(masks, kept_nodes, f"removes every node of hidden layer {at}")
    reached = kept_nodes[0]  # (in,) the nodes that depend on some input
    for mask in masks:
        reached = (mask & reached).any(1)  # (out,)
    if not reached.all():
        cut = int((~reached).nonzero()[0])
        return _Plan(masks, kept_nodes, f"cuts output {cut} off from every input")
    return _Plan(masks, kept_nodes, "")


def _refusal(
    layers: Sequence[KANLinear], scores: Attribution, threshold: float, nodes: bool, problem: str
) -> ConfigError:
    """The error for a threshold that breaks the network, with the largest one that does not
    (the plan only changes at score values, and keeps less as T grows: bisect over them)."""
    values = torch.cat([*(e.flatten() for e in scores.edges), *scores.nodes]).unique().tolist()
    candidates = sorted(v for v in values if v < threshold)
    low, high = 0, len(candidates) - 1
    best = 0.0
    while low <= high:
        mid = (low + high) // 2
        if _plan(layers, scores, candidates[mid], nodes).problem:
            high = mid - 1
        else:
            best, low = candidates[mid], mid + 1
    shown = _floor_digits(best)  # rounded down, so that the number shown works as a threshold
    reason = f"{threshold:g} {problem}; the largest threshold that keeps a network is {shown:g}"
    return ConfigError("", "--threshold", reason)


def _floor_digits(value: float, digits: int = 4) -> float:
    if value <= 0:
        return 0.0
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(value)))
    return math.floor(value * scale) / scale


def _sliced(layer: KANLinear, rows: Tensor, cols: Tensor, mask: Tensor) -> KANLinear:
    """The layer restricted to outputs `rows` and inputs `cols`, its kept edges `mask`
    ((len(rows), len(cols)); None when every edge is kept)."""
    part = KANLinear(
        len(cols),
        len(rows),
        grid_size=layer.grid_size,
        spline_order=layer.spline_order,
        grid_range=layer.grid_range,
        scale_base=layer.scale_base,
        scale_spline=layer.scale_spline,
        base_activation=type(layer.base_activation),
        grid_eps=layer.grid_eps,
        init=layer.init,
        device=layer.grid.device,
        dtype=layer.base_weight.dtype,
        fast=layer.fast,
        chunk_size=layer.chunk_size,
        fused=layer.fused,
    )
    rows, cols = rows.to(layer.grid.device), cols.to(layer.grid.device)
    state = {
        "base_weight": layer.base_weight[rows][:, cols],  # (out', in')
        "spline_weight": layer.spline_weight[rows][:, :, cols],  # (out', G+k, in')
        "grid": layer.grid[cols],  # (in', G+2k+1)
    }
    part.load_state_dict(state)
    part.set_edge_mask(None if mask.all() else mask)
    part.track_regularization = layer.track_regularization
    return part


@torch.no_grad()
def prune(model: nn.Module, inputs: Tensor, threshold: float, *, nodes: bool = True) -> PruneResult:
    """The model pruned at `threshold` (see the module docstring), scored on `inputs` (N, ...),
    a batch as the model takes it. `nodes=False` masks edges only. ConfigError for a threshold
    that is not a number >= 0 or leaves no working network (a hidden layer without nodes, a node
    without incoming edges), naming the largest one that does."""
    threshold = check_threshold(threshold)
    layers = kan_stack(model)
    if nodes and not nodes_removable(model):
        raise ValueError("prune: hidden nodes can be removed only between bare KAN layers")
    scores = attribute(layers, layer_inputs(model, inputs))
    plan = _plan(layers, scores, threshold, nodes)
    if plan.problem:
        raise _refusal(layers, scores, threshold, nodes, plan.problem)
    kept = [alive.nonzero().flatten() for alive in plan.kept]
    pruned = copy.deepcopy(model)
    for index, (layer, mask) in enumerate(zip(layers, plan.masks, strict=True)):
        rows, cols = kept[index + 1], kept[index]
        pruned.kan[index] = _sliced(layer, rows, cols, mask[rows][:, cols])
    return PruneResult(pruned, scores, plan.masks, kept, threshold)


def input_names(input_shape: Sequence[int], feature_names: Sequence[str] | None) -> list[str]:
    """A name for each flattened input: the CSV's columns, x1.. for other feature vectors,
    `pixel (row, col)` (`channel c (row, col)` for several channels) for images."""
    if feature_names:
        return list(feature_names)
    if len(input_shape) == 1:
        return [f"x{k + 1}" for k in range(input_shape[0])]
    channels, height, width = input_shape
    where = [f"({r}, {c})" for r in range(height) for c in range(width)]
    if channels == 1:
        return [f"pixel {w}" for w in where]
    return [f"channel {ch} {w}" for ch in range(channels) for w in where]


def rank_inputs(scores: Attribution, names: Sequence[str]) -> list[tuple[str, float]]:
    """The inputs as (name, score), most important first (ties in input order)."""
    inputs = scores.nodes[0]
    if len(names) != len(inputs):
        raise ValueError(f"rank_inputs: {len(inputs)} inputs but {len(names)} names")
    order = sorted(range(len(inputs)), key=lambda k: -float(inputs[k]))
    return [(names[k], float(inputs[k])) for k in order]

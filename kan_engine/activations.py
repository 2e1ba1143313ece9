"""What a KAN learned: each edge's function phi_ij(x) over its grid, and which edges matter.

phi_ij(x) = scale_base * W_b[j, i] * act(x) + scale_spline * sum_g C[j, g, i] B_g(x) is the whole
contribution of input i to output j (`KANLinear` sums them over i), so plotting it shows exactly
what the layer does with that input. The layer computes it (`KANLinear.edge_function`, and
`edge_functions` for every edge at once) with the textbook basis on input i's own knots, so the
curve follows a grid that `update_grid` has moved.

Importance of an edge is mean |phi_ij(x)| over inputs x (the KAN paper's L1 magnitude). Given the
inputs a layer saw (`inputs`), that is the importance on real data; a checkpoint stores no inputs,
so otherwise x is a uniform sample over each input's grid range, which weighs every part of the
range alike (say so where it is shown: `ImportanceSource`).

Layers are read from a run folder's checkpoint without building the model or loading its data set
(`load_layers`): each KAN layer's tensors sit under `<path>.spline_weight` / `.base_weight` /
`.grid` (and `.edge_mask` for a pruned one) in the model state, and the checkpoint's own config
holds the scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kan_engine import checkpoint as ckpt
from kan_engine import history, runs
from kan_engine.config import validate_config
from kan_engine.errors import ConfigError, RunDirError
from kan_engine.kan import KANLinear

__all__ = [
    "EdgeCurve",
    "UNIFORM",
    "edge_curve",
    "edge_importance",
    "edge_values",
    "grid_range",
    "load_layers",
    "outside_share",
    "pick_layer",
    "rank_edges",
]

UNIFORM = "a uniform sample over each input's grid range (a checkpoint stores no inputs)"
RECORDED = "the layer's recorded inputs"
CHUNK_ELEMENTS = 2**24  # (samples, in, out) values evaluated at once by `edge_importance`


@dataclass(frozen=True)
class EdgeCurve:
    """phi_ij sampled over input i's grid range, and at the grid's knots."""

    i: int
    j: int
    x: list[float]
    y: list[float]
    knots: list[float]  # the G+1 knots of the grid range (the extension knots left out)
    knot_values: list[float]


def grid_range(layer: KANLinear, i: int) -> tuple[float, float]:
    """Input i's grid range: where its splines have full support."""
    k = layer.spline_order
    return float(layer.grid[i, k]), float(layer.grid[i, -k - 1])


def _check_edge(layer: KANLinear, i: int, j: int) -> None:
    if not (0 <= i < layer.in_features and 0 <= j < layer.out_features):
        raise ConfigError(
            "--edge",
            f"{i} {j}",
            f"no such edge: inputs are 0..{layer.in_features - 1}, "
            f"outputs 0..{layer.out_features - 1}",
        )


@torch.no_grad()
def edge_values(layer: KANLinear, i: int, j: int, x: Tensor) -> Tensor:
    """phi_ij at points x (P,) -> (P,)."""
    _check_edge(layer, i, j)
    return layer.edge_function(x, out_index=j, in_index=i)


def edge_curve(layer: KANLinear, i: int, j: int, points: int = 200) -> EdgeCurve:
    """phi_ij on `points` evenly spaced x over input i's grid range, and at its knots."""
    _check_edge(layer, i, j)
    low, high = grid_range(layer, i)
    x = torch.linspace(low, high, points, dtype=layer.grid.dtype)
    k = layer.spline_order
    knots = layer.grid[i, k : layer.grid.shape[1] - k]  # (G+1,)
    return EdgeCurve(
        i=i,
        j=j,
        x=x.tolist(),
        y=edge_values(layer, i, j, x).tolist(),
        knots=knots.tolist(),
        knot_values=edge_values(layer, i, j, knots).tolist(),
    )


@torch.no_grad()
def edge_importance(layer: KANLinear, inputs: Tensor | None = None, samples: int = 64) -> Tensor:
    """Mean |phi_ij(x)| over inputs -> (out, in); see the module docstring for the inputs used.

    Costs samples * in * out * (G+k) multiply-adds, evaluated in chunks of samples so that no
    more than CHUNK_ELEMENTS (sample, in, out) values exist at once.
    """
    k = layer.spline_order
    if inputs is None:
        low, high = layer.grid[:, k], layer.grid[:, -k - 1]  # (in,)
        share = (torch.arange(samples, dtype=low.dtype, device=low.device) + 0.5) / samples  # (S,)
        x = low + share[:, None] * (high - low)  # (S, in)
    else:
        x = inputs.reshape(-1, layer.in_features).to(layer.grid)  # (S, in)
    total = x.new_zeros(layer.in_features, layer.out_features)  # (in, out)
    rows = max(1, CHUNK_ELEMENTS // (layer.in_features * layer.out_features))
    for part in x.split(rows):
        total += layer.edge_functions(part).abs().sum(0)  # (s, in, out) summed over s
    return (total / max(x.shape[0], 1)).t()  # (out, in)


def rank_edges(importance: Tensor, top: int = 10) -> list[tuple[int, int, float]]:
    """The `top` edges as (input i, output j, importance), most important first."""
    flat = importance.flatten()
    values, index = flat.topk(min(top, flat.numel()))
    n_in = importance.shape[1]
    return [(int(p) % n_in, int(p) // n_in, float(v)) for v, p in zip(values, index, strict=True)]


def load_layers(run_dir: Path, checkpoint: str = "best") -> tuple[dict[str, KANLinear], int]:
    """The KAN layers of a run's checkpoint by module path (on the CPU), and its epoch."""
    runs.check_run_folder(run_dir)
    path = runs.checkpoint_path(run_dir, checkpoint)
    state = ckpt.load(path, keys=("model", "config"))
    if not isinstance(state["config"], dict):
        raise RunDirError(f"{path}: config: not a config")
    config = validate_config(state["config"], str(path))
    ema = state.get("ema")
    if isinstance(ema, dict) and not isinstance(ema.get("model"), dict):
        raise RunDirError(f"{path}: ema: not a weight average")
    model = ckpt.evaluated_weights(state)
    if not isinstance(model, dict):
        raise RunDirError(f"{path}: model: not a state dict")
    layers: dict[str, KANLinear] = {}
    for key in model:
        if not isinstance(key, str) or not key.endswith(".spline_weight"):
            continue
        name = key[: -len(".spline_weight")]
        try:
            spline, base, grid = (
                model[f"{name}.{t}"] for t in ("spline_weight", "base_weight", "grid")
            )
        except KeyError as exc:
            raise RunDirError(f"{path}: KAN layer {name} lacks {exc.args[0]}") from None
        if not (isinstance(spline, torch.Tensor) and spline.dim() == 3):
            raise RunDirError(f"{path}: {key}: not a 3-d tensor")
        out_features, n_basis, in_features = spline.shape
        order = config.kan.spline_order
        if n_basis <= order:  # G + k basis functions per edge, G >= 1
            raise RunDirError(f"{path}: {key}: {n_basis} basis functions for order {order}")
        with torch.device("meta"):
            layer = KANLinear(
                in_features,
                out_features,
                grid_size=n_basis - order,
                spline_order=order,
                scale_base=config.kan.scale_base,
                scale_spline=config.kan.scale_spline,
            )
        tensors = {"spline_weight": spline, "base_weight": base, "grid": grid}
        if f"{name}.edge_mask" in model:  # a pruned layer (kan_engine.pruning)
            tensors["edge_mask"] = model[f"{name}.edge_mask"]
        with ckpt.fitting(path, f"a KAN layer of order {order}"):
            layer.load_state_dict(tensors, assign=True)
        layers[name] = layer.float().eval()
    if not layers:
        raise RunDirError(f"{path}: the model ({config.model.name}) has no KAN layer")
    counters = state.get("counters")
    epoch = counters.get("epochs_run", 0) if isinstance(counters, dict) else 0
    return layers, epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def pick_layer(layers: dict[str, KANLinear], spec: str) -> tuple[str, KANLinear]:
    """A layer by module path (`kan.0`) or by its position (`0`, `-1` for the last)."""
    if spec in layers:
        return spec, layers[spec]
    names = list(layers)
    try:
        name = names[int(spec)]
    except (ValueError, IndexError):
        known = ", ".join(f"{n} ({p})" for p, n in enumerate(names))
        raise ConfigError("--layer", spec, f"no such KAN layer (known: {known})") from None
    return name, layers[name]


def outside_share(run_dir: Path, layer: str, epoch: int = 0) -> tuple[float, int] | None:
    """(share of the layer's inputs outside its grid, epoch) as the run recorded it at the end
    of `epoch` (its last training batch), else of the last epoch that recorded it; None when
    the run recorded none."""
    found = None
    for row in history.epoch_rows(run_dir):
        shares = row.get("outside_grid")
        share = shares.get(layer) if isinstance(shares, dict) else None
        at = row.get("epoch", 0)
        if isinstance(share, (int, float)) and isinstance(at, int):  # a damaged row is passed by
            found = (float(share), at)
            if at == epoch:
                break
    return found

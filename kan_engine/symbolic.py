"""Formulas from a stack of KAN layers: every edge matched to a library function, then composed.

A flat KAN is layers applied in sequence with nothing in between, and each layer's output j is
sum_i phi_ij(input i) (no bias). So once every edge has a formula (`symbolic_fit.fit_edge`), the
network's formula is the composition node_j = sum_i fit_ij(node_i), layer by layer, between
the caller's input normalisation and output de-standardisation, in the original variables.

Each edge is fitted on the range its inputs actually take: the samples are propagated through
the layers, and the edge's curve is sampled at `points` even steps between the observed min and
max of its input (outside that range the network was never asked anything, and a fit there
would only chase the spline's extrapolation). From the second layer on, that range also covers
the values the formula of the layers before gives on the same samples: the two differ by the
fits' errors, and a sqrt or log fitted on the network's range alone can start just inside the
formula's, which would make the formula NaN on its own samples. Edges whose importance (mean
|phi| on the samples, the activation viewer's `edge_importance`) is below `threshold` become 0.

Simplification is deliberately cheap: sympy's automatic canonical form (numbers fold into sums
and distribute over them) and nothing else, since `simplify` or even `expand` can take time
without bound on a composed formula ((a sum of 20 terms)^4 expanded). `rounded` rounds the
constants for display; `formulas` keep them exact, and `check` scores those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kan_engine.activations import CHUNK_ELEMENTS, edge_importance
from kan_engine.errors import SymbolicError
from kan_engine.kan import KANLinear
from kan_engine.symbolic_eval import check, evaluate, regression_metrics
from kan_engine.symbolic_fit import PENALTY, EdgeFit, fit_edge
from kan_engine.symbolic_library import LIBRARY, Candidate, sympy_module

# evaluate, check and regression_metrics live in symbolic_eval; re-exported so that one import
# serves a caller (the CLI) that makes a formula and then scores it.
__all__ = [
    "EdgeFormula",
    "NetworkFormula",
    "check",
    "edge_text",
    "evaluate",
    "fit_layer_edge",
    "network_formula",
    "regression_metrics",
    "round_constants",
]

POINTS = 256  # samples of each edge's curve
MAX_EDGES = 2000  # edges fitted at most (about 0.1 s each): prune with a threshold beyond that


@dataclass(frozen=True)
class EdgeFormula:
    """One edge of layer `layer`, input `in_index` -> output `out_index`: its importance, the
    input range it was fitted on, and the candidates best first (empty: pruned, it is 0)."""

    layer: int
    in_index: int
    out_index: int
    importance: float
    low: float
    high: float
    candidates: tuple[EdgeFit, ...]

    @property
    def chosen(self) -> EdgeFit | None:
        """The fit composed into the formula; None for a pruned edge."""
        return self.candidates[0] if self.candidates else None


@dataclass(frozen=True)
class NetworkFormula:
    """One sympy formula per output in the variables `names`, and the edge fits it is made of."""

    names: tuple[str, ...]
    edges: tuple[EdgeFormula, ...]
    formulas: tuple[Any, ...]  # sympy.Expr per output, constants unrounded

    def rounded(self, digits: int = 4) -> list[Any]:
        """The formulas with constants rounded to `digits` significant digits, for display."""
        return [round_constants(f, digits) for f in self.formulas]

    def check(self, x: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
        """`symbolic_eval.check` of each output's formula: x (N, inputs) and y (N, outputs) in
        the original units."""
        y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
        if y.shape[1] != len(self.formulas):
            raise ValueError(f"check: y must have {len(self.formulas)} columns (got {y.shape})")
        return [check(f, x, y[:, j], self.names) for j, f in enumerate(self.formulas)]


def round_constants(expr: Any, digits: int = 4) -> Any:
    """expr with every float rounded to `digits` significant digits; one that rounds to an
    integer becomes that integer, so 1.0*x^2 reads x^2."""
    sp = sympy_module()
    swap = {}
    for number in expr.atoms(sp.Float):
        value = float(f"{float(number):.{digits}g}")
        swap[number] = sp.Integer(int(value)) if value.is_integer() else sp.Float(value, digits)
    return expr.xreplace(swap)


def edge_text(fit: EdgeFit, digits: int = 3, var: str = "x") -> str:
    """One edge's fit as a formula in `var`, constants rounded to `digits` significant digits
    (`1.02*sin(3.14*x - 0.01)`): how a single edge reads where no network formula is shown."""
    return str(round_constants(fit.sympy(sympy_module().Symbol(var)), digits))


@torch.no_grad()
def fit_layer_edge(
    layer: KANLinear,
    in_index: int,
    out_index: int,
    low: float,
    high: float,
    library: Sequence[Candidate] = LIBRARY,
    penalty: float = PENALTY,
    points: int = POINTS,
) -> tuple[EdgeFit, ...]:
    """The candidates for edge in_index -> out_index of `layer`, best first: its curve sampled
    at `points` even steps over [low, high] and matched by `fit_edge`. One edge as
    `network_formula` fits each of its edges, for a caller that shows one (the activation
    viewer, on the range it plots)."""
    grid = torch.linspace(low, high, points, dtype=layer.grid.dtype)  # (points,)
    curve = layer.edge_function(grid.to(layer.grid.device), out_index, in_index).cpu().numpy()
    return tuple(fit_edge(grid.numpy(), curve, library, penalty))


def _propagate(layer: KANLinear, h: torch.Tensor) -> torch.Tensor:
    """The layer's output at inputs h (N, in) -> (N, out), as the sum of its edges (the forward
    without touching the layer's training-time state, and on the textbook basis)."""
    rows = max(1, CHUNK_ELEMENTS // (layer.in_features * layer.out_features))
    return torch.cat([layer.edge_functions(part).sum(1) for part in h.split(rows)])


def _affine_maps(
    maps: Sequence[tuple[float, float]] | None, count: int, what: str
) -> list[tuple[float, float]]:
    if maps is None:
        return [(0.0, 1.0)] * count
    if len(maps) != count or any(not std or not np.isfinite(std) for _, std in maps):
        raise ValueError(f"network_formula: {what} needs {count} (mean, std) with std != 0")
    return [(float(m), float(s)) for m, s in maps]


def _layer_inputs(
    layers: Sequence[KANLinear], h: torch.Tensor
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Each layer's inputs (N, in) when the network runs on h, and its edges' importance
    (out, in) on them."""
    seen, importances = [], []
    for layer in layers:
        h = h.to(layer.grid)
        seen.append(h)
        importances.append(edge_importance(layer, h).cpu().numpy())
        h = _propagate(layer, h)
    return seen, importances


@torch.no_grad()
def network_formula(
    layers: Sequence[KANLinear],
    x_norm_samples: np.ndarray | torch.Tensor,
    input_affine: Sequence[tuple[float, float]] | None = None,
    output_affine: Sequence[tuple[float, float]] | None = None,
    names: Sequence[str] | None = None,
    threshold: float = 0.0,
    library: Sequence[Candidate] = LIBRARY,
    penalty: float = PENALTY,
    points: int = POINTS,
    max_edges: int = MAX_EDGES,
    progress: Callable[[int, int], None] | None = None,
) -> NetworkFormula:
    """The formulas of `layers` applied in sequence, from normalised samples x_norm (N, in0).

    Input k of the network is (names[k] - mean_k) / std_k (`input_affine`; names default to
    x1, x2, ...), output j is out_j * std_j + mean_j (`output_affine`); both default to the
    identity. `progress(done, total)` is called after each edge fitted. Raises SymbolicError
    when more than `max_edges` edges clear the threshold, before fitting any.
    """
    sp = sympy_module()
    if not layers or not library:
        raise ValueError("network_formula: needs at least one layer and one candidate")
    for before, after in zip(layers, layers[1:], strict=False):
        if before.out_features != after.in_features:
            raise ValueError(
                f"network_formula: a layer of {before.out_features} outputs feeds one of "
                f"{after.in_features} inputs"
            )
    n_in, n_out = layers[0].in_features, layers[-1].out_features
    names = tuple(names) if names is not None else tuple(f"x{k + 1}" for k in range(n_in))
    if len(names) != n_in:
        raise ValueError(f"network_formula: {n_in} inputs but {len(names)} names")
    inputs = _affine_maps(input_affine, n_in, "input_affine")
    outputs = _affine_maps(output_affine, n_out, "output_affine")
    h = torch.as_tensor(x_norm_samples).to(layers[0].grid).reshape(-1, n_in)  # (N, in0)
    if h.shape[0] < 2 or not torch.isfinite(h).all():
        raise ValueError("network_formula: need at least 2 finite samples")
    seen, importances = _layer_inputs(layers, h)
    total = sum(int(((imp >= threshold) & (imp > 0)).sum()) for imp in importances)
    if total > max_edges:
        raise SymbolicError(
            f"{total} edges to fit (at most {max_edges}): raise the importance threshold"
        )

    nodes = [
        sp.Symbol(name) if (mean, std) == (0.0, 1.0) else (sp.Symbol(name) - mean) / std
        for name, (mean, std) in zip(names, inputs, strict=True)
    ]
    means, stds = (np.array(column) for column in zip(*inputs, strict=True))
    x_original = seen[0].cpu().double().numpy() * stds + means  # (N, in0)
    edges: list[EdgeFormula] = []
    done = 0
    for index, (layer, h, importance) in enumerate(zip(layers, seen, importances, strict=True)):
        # the range of input i: where the network takes it, and where the formula so far does
        own = np.stack([evaluate(node, names, x_original) for node in nodes], axis=1)  # (N, in)
        low = np.minimum(h.min(0).values.cpu().numpy(), own.min(0))  # (in,)
        high = np.maximum(h.max(0).values.cpu().numpy(), own.max(0))
        terms: list[list[Any]] = [[] for _ in range(layer.out_features)]
        for i in range(layer.in_features):
            span = float(low[i]), float(high[i])
            for j in range(layer.out_features):
                fits: tuple[EdgeFit, ...] = ()
                if importance[j, i] >= threshold and importance[j, i] > 0:  # 0: pruned
                    fits = fit_layer_edge(layer, i, j, *span, library, penalty, points)
                    terms[j].append(fits[0].sympy(nodes[i]))
                    done += 1
                    if progress is not None:
                        progress(done, total)
                edges.append(EdgeFormula(index, i, j, float(importance[j, i]), *span, fits))
        nodes = [sp.Add(*t) for t in terms]
    formulas = tuple(
        node if (mean, std) == (0.0, 1.0) else node * std + mean
        for node, (mean, std) in zip(nodes, outputs, strict=True)
    )
    return NetworkFormula(names, tuple(edges), formulas)

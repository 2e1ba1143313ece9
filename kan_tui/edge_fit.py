"""The activation viewer's symbolic fit of one edge: the formula line, and the points drawn.

The fit is the engine's own (`symbolic.fit_layer_edge`, what `kan-tui symbolic` does for every
edge), made on the range the viewer plots: the input's grid range, in the layer's own input
units. `kan-tui symbolic` fits on the range the training inputs take and composes the data's
normalisation in, so its constants and R² can differ from the viewer's for the same edge; the
viewer has only the checkpoint, which stores no inputs.

No Textual here: the viewer runs `fit_view` in a thread worker, and a test can call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kan_engine import activations, symbolic
from kan_engine.kan import KANLinear
from kan_tui.plotting import Point

RUNNERS_UP = 3  # candidates named after the chosen one
OVERLAY_POINTS = 100  # x the fit is drawn at (plotext joins them with the series marks)


@dataclass(frozen=True)
class EdgeFitView:
    """One edge's fit as the viewer shows it: the text line, and the points (x, fit(x)) to draw
    over the curve (empty when there is nothing to draw: a constant edge)."""

    edge: tuple[int, int]
    text: str
    overlay: list[Point]


def fit_view(layer: KANLinear, i: int, j: int, points: int = OVERLAY_POINTS) -> EdgeFitView:
    """Edge i -> j of `layer` fitted over input i's grid range: `i -> j  sin: 1.02*sin(3.14*x -
    0.01) + 0.003  R² 0.999981 · then tanh 0.981234, ...`, or what the edge is when it is
    constant (the fit's "0" candidate: there is no function to name)."""
    low, high = activations.grid_range(layer, i)
    fits = symbolic.fit_layer_edge(layer, i, j, low, high)
    best = fits[0]
    if best.name == "0":
        return EdgeFitView((i, j), f"{i} -> {j} is constant ({best.d:.3g}): no function to fit", [])
    text = f"{i} -> {j}  {best.name}: {symbolic.edge_text(best)}  R² {best.r2:.6f}"
    runners = ", ".join(f"{fit.name} {fit.r2:.6f}" for fit in fits[1 : RUNNERS_UP + 1])
    if runners:
        text += f" · then {runners}"
    xs = np.linspace(low, high, points)
    # only where the fit is defined: a sqrt or log fitted up to the range's edge may be NaN a
    # rounding error beyond it
    overlay = [(float(x), float(y)) for x, y in zip(xs, best.values(xs), strict=True)]
    return EdgeFitView((i, j), text, [(x, y) for x, y in overlay if np.isfinite(y)])

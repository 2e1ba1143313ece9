"""Line charts drawn by plotext (through textual-plotext), on the UI thread only.

`SeriesChart.show` only stores the data; the figure is built when Textual renders the widget, so
a chart in a hidden tab costs nothing until it is shown. Series are thinned
to a fixed number of points before plotting, so a long run draws as fast as a short one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from textual.app import RenderResult
from textual_plotext import PlotextPlot

Point = tuple[float, float]
MAX_POINTS = 400  # more than the braille resolution of a 120-column chart

COLORS = {
    "train": "cyan",
    "val": "orange",
    "cnn": "cyan",
    "kan": "magenta",
    "other": "orange",
}


def thin(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most `limit` points, evenly spaced, always keeping the last one (the newest value)."""
    if len(points) <= limit:
        return list(points)
    stride = len(points) / limit
    kept = [points[int(i * stride)] for i in range(limit - 1)]
    kept.append(points[-1])
    return kept


def decades(low: float, high: float) -> list[float]:
    """The powers of ten within [low, high] (both > 0): ticks for a log axis."""
    first, last = math.ceil(math.log10(low)), math.floor(math.log10(high))
    return [10.0**k for k in range(first, last + 1)]


class SeriesChart(PlotextPlot):
    """Named series against epochs; optionally on a log y axis (losses).

    `show` only stores the (thinned) series; the plotext figure is rebuilt from them in every
    `render`. Rebuilding is required, not just tidy: plotext's `build` applies the log scale to
    the figure's data in place, so rendering one figure twice (a resize, a tab switch) would take
    the log of logs and fail on negative values.
    """

    def __init__(
        self, *, log_y: bool = False, empty: str = "waiting for data", **kwargs: str
    ) -> None:
        super().__init__(**kwargs)
        self.log_y = log_y
        self.empty = empty
        self.xlabel = "epoch"
        self.series: dict[str, list[Point]] = {}
        self.points_drawn = 0  # for tests and the benchmark: did data reach the chart?

    def show(self, series: Mapping[str, Sequence[Point]], *, xlabel: str = "epoch") -> None:
        self.series = {}
        for label, points in series.items():
            kept = [(x, y) for x, y in thin(points) if y > 0 or not self.log_y]
            if kept:
                self.series[label] = kept
        self.xlabel = xlabel
        self.points_drawn = sum(len(points) for points in self.series.values())
        self.refresh()

    def render(self) -> RenderResult:
        plt = self.plt
        plt.clear_figure()
        for label, points in self.series.items():
            xs, ys = zip(*points, strict=True)
            marker = "braille" if len(points) > 12 else "dot"
            plt.plot(xs, ys, label=label, marker=marker, color=COLORS.get(label, "white"))
        if not self.series:
            plt.title(self.empty)
        elif self.log_y:
            plt.yscale("log")
            ticks = decades(
                min(y for pts in self.series.values() for _, y in pts),
                max(y for pts in self.series.values() for _, y in pts),
            )
            if len(ticks) >= 3:  # over many decades: short labels (1e-05), not 0.0000123
                plt.yticks(ticks, [f"{t:g}" for t in ticks])
        plt.xlabel(self.xlabel)
        return super().render()

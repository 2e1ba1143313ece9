"""Line charts drawn by plotext (through textual-plotext), on the UI thread only.

`SeriesChart.show` only hands the data to the plotext figure; plotext builds the text when Textual
renders the widget, so a chart in a hidden tab costs nothing until it is shown. Series are thinned
to a fixed number of points before plotting, so a long run draws as fast as a short one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


class SeriesChart(PlotextPlot):
    """Named series against epochs; optionally on a log y axis (losses)."""

    def __init__(
        self, *, log_y: bool = False, empty: str = "waiting for data", **kwargs: str
    ) -> None:
        super().__init__(**kwargs)
        self.log_y = log_y
        self.empty = empty
        self.points_drawn = 0  # for tests and the benchmark: did data reach the chart?
        self.show({})

    def show(self, series: Mapping[str, Sequence[Point]], *, xlabel: str = "epoch") -> None:
        plt = self.plt
        plt.clear_figure()
        drawn = 0
        for label, points in series.items():
            kept = [(x, y) for x, y in thin(points) if y > 0 or not self.log_y]
            if not kept:
                continue
            xs, ys = zip(*kept, strict=True)
            marker = "braille" if len(kept) > 12 else "dot"
            plt.plot(xs, ys, label=label, marker=marker, color=COLORS.get(label, "white"))
            drawn += len(kept)
        if drawn == 0:
            plt.title(self.empty)
        if self.log_y and drawn:
            plt.yscale("log")
        plt.xlabel(xlabel)
        self.points_drawn = drawn
        self.refresh()

"""Line charts drawn by plotext (through textual-plotext), on the UI thread only.

`SeriesChart.show` only stores the data; the figure is built when Textual renders the widget, so
a chart in a hidden tab costs nothing until it is shown. Series are thinned
to a fixed number of points before plotting, so a long run draws as fast as a short one. The
drawing itself is `kan_tui.plotting.draw`, shared with the CLI's text charts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

from kan_tui.plotting import Point, draw

MAX_POINTS = 400  # more than the braille resolution of a 120-column chart

# each series' colour as a 256-colour number, which plotext and Rich both read (plotext's names
# are not Rich's: its "orange" is colour 3); the legend below the plot is coloured to match
COLORS = {"train": 6, "val": 3, "cnn": 6, "kan": 5, "other": 3, "phi": 6, "fit": 5}
OTHER_COLOR = 15  # white


def thin(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most `limit` points, evenly spaced, always keeping the last one (the newest value)."""
    if len(points) <= limit:
        return list(points)
    stride = len(points) / limit
    kept = [points[int(i * stride)] for i in range(limit - 1)]
    kept.append(points[-1])
    return kept


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
        drawn = draw(plt, self.series, xlabel=self.xlabel, log_y=self.log_y, color=self.color)
        if not drawn.points:
            plt.title(self.empty)
        self.decorate(plt)
        chart = super().render()
        if isinstance(chart, Text):  # textual-plotext's figure: colour the legend's entries
            for mark, label in drawn.legend:
                chart.highlight_words([f"{mark} {label}"], style=f"color({self.color(label)})")
        return chart

    def decorate(self, plt: Any) -> None:
        """Marks beyond the series, on the figure being rebuilt (a subclass's: the activation
        viewer's title and grid knots); none here."""

    @staticmethod
    def color(label: str) -> int:
        return COLORS.get(label, OTHER_COLOR)

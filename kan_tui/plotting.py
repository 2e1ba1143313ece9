"""Line charts with plotext: one way of drawing series, for the app's charts and the CLI's.

`draw` puts series on a plotext figure: the TUI's `SeriesChart` (kan_tui.widgets.charts) calls
it on its textual-plotext figure, and `text_chart` on plotext's own to print `lr-find` and
`inspect` plots. No textual here (the CLI's tools must not need it), and plotext is imported only
by `text_chart`: the widget hands in its own figure.

Each series has its own marker, so lines stay apart without colour (NO_COLOR, a pipe, a
colour-blind reader): the LR chart's three groups all drew braille and told apart only by hue.
The legend is a line below the plot, beside the x label, never plotext's own box, which sits on
the data in the top-left corner (where a warm-up's curve starts).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Point = tuple[float, float]
DOT_POINTS = 12  # series this short are drawn as characters: braille would hide them
BRAILLE = "⢕"  # how a braille line is shown in a legend (plotext's own glyph for it)
# the marker of the 1st, 2nd, ... series; the first is drawn in braille when it is long enough
MARKERS = ("•", "+", "x", "o", "*")
# a log axis over this many decades is labelled 1e-05, 0.0001, ... (plotext would write
# 0.0000123); a narrower one keeps plotext's own ticks, which say more there
MIN_DECADES = 3


def decades(low: float, high: float) -> list[float]:
    """The powers of ten within [low, high] (both > 0): ticks for a log axis."""
    first, last = math.ceil(math.log10(low)), math.floor(math.log10(high))
    return [10.0**k for k in range(first, last + 1)]


@dataclass(frozen=True)
class Drawn:
    """What `draw` put on the figure: every point, and each series' (marker, label)."""

    points: list[Point]
    legend: list[tuple[str, str]]

    def legend_text(self) -> str:
        """`⢕ cnn  + kan  x other`; empty for a single series (the title says what it is)."""
        if len(self.legend) < 2:
            return ""
        return "  ".join(f"{marker} {label}" for marker, label in self.legend)


def marker(index: int, points: int) -> str:
    """The marker of the `index`-th series: braille (the finest line) for a long first series,
    else a character of its own."""
    if index == 0 and points > DOT_POINTS:
        return "braille"
    return MARKERS[index % len(MARKERS)]


def draw(
    plt: Any,
    series: Mapping[str, Sequence[Point]],
    *,
    xlabel: str,
    log_x: bool = False,
    log_y: bool = False,
    color: Callable[[str], str | int | None] = lambda label: None,
) -> Drawn:
    """Each series as a line on the plotext figure `plt`, in `color(label)` (None: plotext's
    next colour) with its own marker; points that are not finite, or not > 0 on a log axis, are
    left out. The x label is `xlabel` followed by the legend."""
    drawn: list[Point] = []
    legend: list[tuple[str, str]] = []
    for index, (label, points) in enumerate(series.items()):
        kept = [
            (x, y)
            for x, y in points
            if math.isfinite(x)
            and math.isfinite(y)
            and (x > 0 or not log_x)
            and (y > 0 or not log_y)
        ]
        if not kept:
            continue
        xs, ys = zip(*kept, strict=True)
        shape = marker(index, len(kept))
        plt.plot(xs, ys, marker=shape, color=color(label))  # no label: no legend box on the data
        legend.append((BRAILLE if shape == "braille" else shape, label))
        drawn += kept
    if drawn and log_x:
        plt.xscale("log")
        _label_decades(plt.xticks, [x for x, _ in drawn])
    if drawn and log_y:
        plt.yscale("log")
        _label_decades(plt.yticks, [y for _, y in drawn])
    result = Drawn(drawn, legend)
    plt.xlabel("    ".join(part for part in (xlabel, result.legend_text()) if part))
    return result


def _label_decades(set_ticks: Callable[..., None], values: list[float]) -> None:
    ticks = decades(min(values), max(values))
    if len(ticks) >= MIN_DECADES:
        set_ticks(ticks, [f"{t:g}" for t in ticks])


def text_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    xlabel: str,
    log_x: bool = False,
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """A chart as text, as wide as the terminal (100 columns in a pipe), without colours in a
    pipe or under NO_COLOR; `marks` draws vertical lines at x values, labelled at the bottom."""
    import plotext as plt

    columns, _ = shutil.get_terminal_size(fallback=(100, 30))
    plt.clear_figure()
    plt.plotsize(max(40, columns - 1), 20)
    drawn = draw(plt, series, xlabel=xlabel, log_x=log_x)
    for x, label in marks:
        plt.vline(x, "red")
        if label and drawn.points:
            plt.text(label, x, min(y for _, y in drawn.points))
    plt.title(title)
    text = plt.build()
    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        text = plt.uncolorize(text)
    return text

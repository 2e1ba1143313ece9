"""Line charts with plotext: one way of drawing series, for the app's charts and the CLI's.

`draw` puts series on a plotext figure: the TUI's `SeriesChart` (kan_tui.widgets.charts) calls
it on its textual-plotext figure, and `text_chart` on plotext's own to print `lr-find` and
`inspect` plots. No textual here (the CLI's tools must not need it), and plotext is imported only
by `text_chart`: the widget hands in its own figure.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Point = tuple[float, float]
DOT_POINTS = 12  # series this short are drawn as dots: braille would hide them
# a log axis over this many decades is labelled 1e-05, 0.0001, ... (plotext would write
# 0.0000123); a narrower one keeps plotext's own ticks, which say more there
MIN_DECADES = 3


def decades(low: float, high: float) -> list[float]:
    """The powers of ten within [low, high] (both > 0): ticks for a log axis."""
    first, last = math.ceil(math.log10(low)), math.floor(math.log10(high))
    return [10.0**k for k in range(first, last + 1)]


def draw(
    plt: Any,
    series: Mapping[str, Sequence[Point]],
    *,
    log_x: bool = False,
    log_y: bool = False,
    color: Callable[[str], str | None] = lambda label: None,
) -> list[Point]:
    """Each series as a line on the plotext figure `plt`, with its label and `color(label)`
    (None: plotext's next colour); points that are not finite, or not > 0 on a log axis, are
    left out. Returns every point drawn (an empty list: nothing was)."""
    drawn: list[Point] = []
    for label, points in series.items():
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
        marker = "braille" if len(kept) > DOT_POINTS else "dot"
        plt.plot(xs, ys, label=label, marker=marker, color=color(label))
        drawn += kept
    if drawn and log_x:
        plt.xscale("log")
        _label_decades(plt.xticks, [x for x, _ in drawn])
    if drawn and log_y:
        plt.yscale("log")
        _label_decades(plt.yticks, [y for _, y in drawn])
    return drawn


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
    drawn = draw(plt, series, log_x=log_x)
    for x, label in marks:
        plt.vline(x, "red")
        if label and drawn:
            plt.text(label, x, min(y for _, y in drawn))
    plt.title(title)
    plt.xlabel(xlabel)
    text = plt.build()
    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        text = plt.uncolorize(text)
    return text

"""Numbers as short text, and user text made safe to show, for the TUI and the CLI's tables.

No textual import here: `kan-tui runs list` uses it without the TUI. User text (descriptions,
names, paths, values echoed by errors) reaches a terminal only through `printable` (control
characters escaped, `kan_engine.untrusted`), and reaches Rich or Textual as a `Text` (`plain`),
never as a str: both would read `[bold red]` or `[link=...]` in it as markup.

Paths are broken at their separators to the width they are shown at (`break_paths`, `PathText`):
Rich and Textual wrap at spaces only and fold a longer word wherever the line ends, which cut
run folders in two (`runs/20250101-120000-lite/c` + `heckpoints/last.pt`).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text

from kan_engine import headline
from kan_engine.untrusted import printable

__all__ = [
    "RUN_COLUMNS",
    "PathText",
    "break_paths",
    "count",
    "duration",
    "measure",
    "num",
    "pct",
    "plain",
    "printable",
    "run_cells",
    "score",
    "sig",
]

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

    from kan_engine.history import RunRow

# the columns of a run-history table (`kan-tui runs list`, the runs screen), as `run_cells` fills
# them: what tells runs apart first (the folder: start time and label), the result next, so an
# 80-column table that cuts the last columns still shows which run and how it ended
RUN_COLUMNS = ("folder", "status", "best val", "test", "time", "epochs", "model", "dataset")


def pct(value: float | None) -> str:
    """An accuracy (a share) as a percentage with two decimals, everywhere it is shown: one test
    sample of 10,000 is 0.01 %."""
    return "-" if value is None else f"{value:.2%}"


def sig(value: float | None) -> str:
    """A regression metric (RMSE, MAE: units of the target; R²): four significant digits, in
    scientific notation where small, since function fits run from 1e-1 down to 1e-6."""
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def measure(kind: str, value: float | None) -> str:
    """A value of a task's headline metric (`headline.metric`) where its name is said beside
    it: an accuracy as `pct`, a regression's RMSE as `sig`."""
    return sig(value) if kind == headline.REGRESSION else pct(value)


def score(kind: str, value: float | None) -> str:
    """A task's headline metric where one column holds either task's: an accuracy as `pct`, a
    regression's RMSE named (`rmse 0.0123`), since a bare number would read as a share."""
    if kind != headline.REGRESSION or value is None:
        return measure(kind, value)
    return f"{headline.metric(kind)} {measure(kind, value)}"


def count(n: int, noun: str) -> str:
    """`1 epoch`, `2 epochs`: the plural only where it is one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plain(value: object, style: str = "") -> Text:
    """User text for a Rich table cell or a Textual widget: escaped, and never read as markup."""
    return Text(printable(value), style=style, end="")


_WORD = re.compile(r"\S+")
_AFTER_SEPARATOR = re.compile(r"(?<=[/\\])")  # a path's folders: break after a separator
_AFTER_JOINER = re.compile(r"(?<=[-_.])")  # within a name too long for a line: after - _ .


def break_paths(text: str, width: int) -> str:
    """`text` with line breaks inside each path (a word holding a slash or a backslash) longer
    than `width`, so that no line of it is longer: after a separator where one fits, else after
    a - _ or . of a name too long for a line (`20250101-120000-` + `lite-flat_kan`), never
    mid-name unless a name has nothing to break at. Other text is left to the wrap at spaces."""
    if width < 1:
        return text
    return _WORD.sub(lambda match: _break_path(match.group(), width), text)


def _break_path(word: str, width: int) -> str:
    if cell_len(word) <= width or not ("/" in word or "\\" in word):
        return word
    pieces = [
        piece
        for folder in _AFTER_SEPARATOR.split(word)
        for piece in (_AFTER_JOINER.split(folder) if cell_len(folder) > width else [folder])
        if piece
    ]
    lines = [""]
    for piece in pieces:
        if lines[-1] and cell_len(lines[-1] + piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


class PathText:
    """User text (already `printable`) whose paths are broken by `break_paths` at the width it
    is drawn at, which a log only knows when it renders the line."""

    def __init__(self, text: str, style: str = "") -> None:
        self.text = text
        self.style = style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(break_paths(self.text, options.max_width), style=self.style)


def run_cells(row: RunRow) -> tuple[Text, ...]:
    """One past run as the cells of RUN_COLUMNS (best val and test: its task's `score`). The
    names come from the run folder's files, which anyone may have edited: `plain` cells."""
    return tuple(
        plain(cell)
        for cell in (
            row.path.name,
            row.status,
            score(row.task, row.best_val),
            score(row.task, row.test),
            duration(row.seconds),
            str(row.epochs),
            row.model,
            row.dataset,
        )
    )

"""Numbers as short text, and user text made safe to show, for the TUI and the CLI's tables.

No textual import here: `kan-tui runs list` uses it without the TUI. User text (descriptions,
names, paths, values echoed by errors) reaches a terminal only through `printable` (control
characters escaped, `kan_engine.untrusted`), and reaches Rich or Textual as a `Text` (`plain`),
never as a str: both would read `[bold red]` or `[link=...]` in it as markup.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.text import Text

from kan_engine import headline
from kan_engine.untrusted import printable

__all__ = [
    "RUN_COLUMNS",
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

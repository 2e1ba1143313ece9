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

from kan_engine.untrusted import printable

__all__ = ["RUN_COLUMNS", "duration", "num", "pct", "plain", "printable", "run_cells"]

if TYPE_CHECKING:
    from kan_engine.history import RunRow

# the columns of a run-history table (`kan-tui runs list`, the runs screen), as `run_cells` fills
RUN_COLUMNS = ("date", "preset", "model", "dataset", "best val", "test", "status", "time")


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


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


def run_cells(row: RunRow, *, digits: int = 1) -> tuple[Text, ...]:
    """One past run as the cells of RUN_COLUMNS; `digits`: decimals of the accuracies. The
    names come from the run folder's files, which anyone may have edited: `plain` cells."""
    return tuple(
        plain(cell)
        for cell in (
            row.date,
            row.preset,
            row.model,
            row.dataset,
            pct(row.best_val_acc, digits),
            pct(row.test_acc, digits),
            row.status,
            duration(row.seconds),
        )
    )

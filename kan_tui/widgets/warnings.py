"""Gradient-norm warnings as a table, and notices (early stop, divergence, checkpoints) as a log.

Both append only what arrived since the last drain, so a long run never re-renders its history.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, RichLog

from kan_tui.screens.run_model import RunState
from kan_tui.widgets.stats import num


class WarningsList(DataTable[str | Text]):
    """One row per gradient-norm warning: step, norm, threshold, reason, action."""

    def __init__(self, **kwargs: str) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self.shown = 0

    def on_mount(self) -> None:
        for label, width in (("step", 5), ("norm", 7), ("limit", 5), ("reason", 10)):
            self.add_column(label, width=width)
        self.add_column("action")

    def show(self, state: RunState) -> None:
        fresh = min(state.warnings_seen - self.shown, len(state.warnings))
        if fresh <= 0:
            return
        for row in state.warnings[-fresh:]:
            style = "bold red" if row.reason == "non-finite" else ""
            self.add_row(
                str(row.step),
                Text(num(row.norm), style=style),
                num(row.threshold),
                row.reason,
                row.action,
            )
        self.shown = state.warnings_seen
        self.move_cursor(row=self.row_count - 1)


class NoticeLog(RichLog):
    """Notices from the trainer and the run's milestones, newest at the bottom."""

    def __init__(self, **kwargs: str) -> None:
        super().__init__(wrap=True, markup=False, max_lines=200, min_width=20, **kwargs)
        self.shown = 0

    def show(self, state: RunState) -> None:
        fresh = min(state.notices_seen - self.shown, len(state.notices))
        if fresh <= 0:
            return
        for level, text in state.notices[-fresh:]:
            self.write(Text(text, style="yellow" if level == "warning" else ""))
        self.shown = state.notices_seen

"""Gradient-norm warnings as a table, and notices (early stop, divergence, checkpoints) as a log.

Both append only what arrived since the last drain, so a long run never re-renders its history.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import RichLog, Static

from kan_tui.formatting import PathText, num, printable
from kan_tui.run_model import RunState


class WarningsList(Static):
    """The newest gradient-norm warnings, one row each: step, norm, threshold, reason, the layer
    that went non-finite first (when known), action.

    A plain table of the rows that fit, redrawn only when a warning arrives and without a layout
    pass (its size is fixed by app.tcss): a diverging run can warn every few steps, and a
    scrolling DataTable re-laid out the whole screen for each new row. The stats panel carries
    the total; metrics.jsonl has them all.
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.shown = -1

    def on_mount(self) -> None:
        self.show(RunState())

    def on_resize(self) -> None:
        self.shown = -1  # the number of rows that fit changed

    def show(self, state: RunState) -> None:
        if state.warnings_seen == self.shown:
            return
        self.shown = state.warnings_seen
        if not state.warnings:
            self.update(Text("no gradient-norm warnings", style="dim"), layout=False)
            return
        fit = max(self.size.height - 1, 1)  # one line for the header
        table = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
        table.add_column("step", justify="right", no_wrap=True)
        table.add_column("norm", justify="right", no_wrap=True)
        table.add_column("limit", justify="right", no_wrap=True)
        table.add_column("reason", no_wrap=True)
        table.add_column("layer", no_wrap=True)
        table.add_column("action", no_wrap=True, overflow="ellipsis", ratio=1)
        for row in state.warnings[-fit:]:
            table.add_row(
                str(row.step),
                Text(num(row.norm), style="bold red" if row.reason == "non-finite" else ""),
                num(row.threshold),
                row.reason,
                Text(row.layer, style="bold red") if row.layer else "",
                row.action,
            )
        self.update(table, layout=False)


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
            # notices quote data (CSV headers, class folders) and paths: broken at separators
            self.write(PathText(printable(text), style="yellow" if level == "warning" else ""))
        self.shown = state.notices_seen

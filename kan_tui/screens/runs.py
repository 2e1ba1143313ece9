"""Run history: past runs in a table; the highlighted run's curves; two runs overlaid.

Everything is read from the run folders (`kan_engine.history`), on the UI thread: a listing reads
one small JSON file per run, and a run's curves one metrics file, both fast enough not to need a
worker. Folders that cannot be read are counted in the hint line instead of hiding the rest.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from kan_engine import headline, history
from kan_engine.errors import KanError
from kan_tui.formatting import RUN_COLUMNS, count, plain, printable, run_cells
from kan_tui.widgets.charts import SeriesChart

CHART_KINDS = ("score", "loss")  # score: each run's headline metric (accuracy, or RMSE)
MAX_OVERLAY = 2


class RunsScreen(Screen[None]):
    """`space` marks up to two runs to overlay, `t` switches accuracy (a regression's RMSE) /
    loss, `e` exports the highlighted run's metrics as CSV, `v` opens its learned activations,
    `r` resumes it (a stopped or crashed run), escape goes back."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("space", "mark", "Mark"),
        Binding("t", "toggle_chart", "Acc/loss"),
        Binding("e", "export", "CSV"),
        Binding("v", "activations", "Activations"),
        Binding("r", "resume", "Resume"),
    ]

    def __init__(self, out_dir: Path) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.rows: list[history.RunRow] = []
        self.skipped: list[tuple[Path, str]] = []
        self.marked: list[Path] = []
        self.kind = CHART_KINDS[0]

    def compose(self) -> ComposeResult:
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield SeriesChart(id="runs-chart", empty="no run selected")
        yield Static(id="runs-hint")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(" ", *RUN_COLUMNS)
        self.reload()
        table.focus()

    def reload(self) -> None:
        self.rows, self.skipped = history.list_runs(self.out_dir)
        table = self.query_one(DataTable)
        table.clear()
        for row in self.rows:
            mark = "*" if row.path in self.marked else " "
            table.add_row(mark, *run_cells(row), key=str(row.path))
        skipped = count(len(self.skipped), "unreadable folder")
        broken = f" · {skipped} skipped" if self.skipped else ""
        listed = f"{count(len(self.rows), 'run') if self.rows else 'no runs'} in {self.out_dir}"
        self.query_one("#runs-hint", Static).update(plain(listed + broken))  # holds a path
        self.redraw()

    @property
    def current(self) -> history.RunRow | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self.redraw()

    def redraw(self) -> None:
        """The marked runs overlaid (val and train of each), else the highlighted run; the
        score chart of regressions alone is on a log scale, as losses are (RMSE falls by
        decades)."""
        chart = self.query_one("#runs-chart", SeriesChart)
        shown = self.marked or ([self.current.path] if self.current else [])
        tasks = {path: self._task_of(path) for path in shown}
        chart.log_y = self.kind == "loss" or set(tasks.values()) == {headline.REGRESSION}
        chart.empty = "no finished epoch in this run yet" if shown else "no run selected"
        series = {}
        for number, path in enumerate(shown, 1):
            try:
                curves = history.curves(path)
            except KanError as exc:  # a damaged metrics.jsonl: said once, the rest still drawn
                self._error(exc)
                continue
            prefix = f"{number}:" if len(shown) > 1 else ""
            key = "loss" if self.kind == "loss" else headline.metric(tasks[path])
            series[f"{prefix}train"] = curves[f"train_{key}"]
            series[f"{prefix}val"] = curves[f"val_{key}"]
        chart.show(series)

    def _task_of(self, path: Path) -> str:
        """The task of a listed run (classification for a path that is not listed)."""
        return next((row.task for row in self.rows if row.path == path), headline.CLASSIFICATION)

    def action_mark(self) -> None:
        row = self.current
        if row is None:
            return
        if row.path in self.marked:
            self.marked.remove(row.path)
        else:
            self.marked = [*self.marked, row.path][-MAX_OVERLAY:]
        table = self.query_one(DataTable)
        for other in self.rows:
            mark = "*" if other.path in self.marked else " "
            table.update_cell(str(other.path), table.ordered_columns[0].key, mark)
        self.redraw()

    def action_toggle_chart(self) -> None:
        self.kind = CHART_KINDS[(CHART_KINDS.index(self.kind) + 1) % len(CHART_KINDS)]
        self.redraw()

    def action_export(self) -> None:
        row = self.current
        if row is None:
            return
        try:
            path = history.export_csv(row.path)
        except KanError as exc:
            self._error(exc)
            return
        self.notify(f"wrote {printable(path)}", markup=False)

    def action_activations(self) -> None:
        row = self.current
        if row is not None:
            from kan_tui.screens.activations import ActivationsScreen

            self.app.push_screen(ActivationsScreen(row.path))

    def action_resume(self) -> None:
        """Continue the highlighted run on a dashboard, as `kan-tui resume RUN` does; a run that
        is over, or a folder that cannot be resumed, is said why in a toast."""
        row = self.current
        if row is None:
            return
        from kan_engine import resume_plan
        from kan_tui.screens.dashboard import DashboardScreen

        try:
            plan = resume_plan.read(row.path)
        except KanError as exc:
            self._error(exc)
            return
        if plan.done:
            self.notify(printable(plan.message), markup=False)
            return
        dashboard = DashboardScreen(plan.config, plan.preset, self.out_dir, resume=plan)
        self.app.push_screen(dashboard, lambda _: self.reload())

    def _error(self, exc: KanError) -> None:
        """A folder that cannot be read or resumed: its reason in a toast (it quotes paths)."""
        self.notify(printable(exc), severity="error", markup=False)

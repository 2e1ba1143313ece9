"""The live training dashboard.

The trainer runs in a thread worker and only appends events to `TrainingRun.events`. A timer drains
that queue a few times a second on the UI thread, folds the whole batch into `RunState` (so a burst
of step events costs one redraw) and updates the widgets; plotext is only ever called here. Charts,
the costliest widgets to draw, are redrawn at most every two seconds while training: the UI thread
shares the GIL with a trainer whose loop is Python-bound on small models, and the budget for the
whole dashboard is 3 % of the trainer's throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from kan_engine import headline
from kan_engine.config import RunConfig
from kan_engine.events import Event
from kan_tui.formatting import printable, score
from kan_tui.run_model import RunState, TrainingRun, memory_in_use
from kan_tui.screens.dialogs import ConfirmDialog
from kan_tui.widgets.charts import SeriesChart
from kan_tui.widgets.stats import StatsPanel
from kan_tui.widgets.warnings import NoticeLog, WarningsList

DRAIN_S = 0.25
CHART_S = 2.0
MEMORY_S = 1.0  # reading /proc or the CUDA allocator is cheap, but not free four times a second
JOIN_TIMEOUT_S = 30.0  # a stop is honoured within a step; this only bounds a wedged thread
STATUS_STYLE = {
    "running": "bold green",
    "paused": "bold yellow",
    "stopping": "bold yellow",
    "failed": "bold white on red",
}
CHART_TABS = ("tab-loss", "tab-acc", "tab-lr")
# the title of the score chart's tab by task; a regression's RMSE is drawn on a log scale (a fit
# improves by decades)
SCORE_TABS = {headline.CLASSIFICATION: "Accuracy", headline.REGRESSION: "RMSE"}

if TYPE_CHECKING:
    from kan_engine.resume_plan import ResumePlan


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("p", "pause", "Pause/resume"),
        Binding("s", "stop", "Stop"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("t", "next_chart", "Next chart"),
        Binding("n", "new_run", "New run"),
        Binding("q", "quit_run", "Quit"),
    ]

    def __init__(
        self,
        config: RunConfig,
        preset_name: str,
        out_dir: Path,
        *,
        start: bool = True,
        memory: Callable[[str], str] = memory_in_use,
        resume: ResumePlan | None = None,
    ) -> None:
        """`start=False` shows an idle dashboard for `feed` (replays, snapshots); `memory` reads
        the memory in use of a device (replaceable so that snapshots are stable); `resume`
        continues that run folder instead of starting one."""
        super().__init__()
        self.memory = memory
        self.run = TrainingRun(config, preset_name, out_dir, resume)
        self.state = RunState(model=config.model.name, dataset=config.data.dataset)
        self.state.epochs = config.train.epochs
        self.state.batch_size = config.train.batch_size
        self.start_on_mount = start
        self.worker: Worker[dict[str, Any]] | None = None
        self.exit_code: int | None = None  # set: exit the app with it once the thread ended
        self._charts_version = 0  # the charts start empty
        self._charts_at = 0.0
        self._status_shown = Text()
        self._memory_at = -MEMORY_S
        self._memory_text = ""
        self._task_shown = headline.CLASSIFICATION  # what the score chart is drawn for

    def compose(self) -> ComposeResult:
        yield Static(id="run-status")
        yield Static(id="error-panel")
        with Horizontal(id="dash-main"):
            with TabbedContent(id="charts"):
                with TabPane("Loss", id="tab-loss"):
                    yield SeriesChart(id="chart-loss", log_y=True)
                with TabPane(SCORE_TABS[headline.CLASSIFICATION], id="tab-acc"):
                    yield SeriesChart(id="chart-acc")
                with TabPane("LR", id="tab-lr"):
                    yield SeriesChart(id="chart-lr")
            yield StatsPanel(id="stats")
        with Horizontal(id="dash-bottom"):
            yield WarningsList(id="warnings")
            yield NoticeLog(id="notices")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#error-panel").display = False
        self.refresh_view()
        self.set_interval(DRAIN_S, self.drain)
        if self.start_on_mount:
            self.worker = self.run_worker(
                self.run.work, name="trainer", group="trainer", thread=True, exit_on_error=False
            )

    # --- events in ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Timer callback: take what the trainer queued and redraw once (charts: CHART_S).
        Once the run is over, a tick that brought nothing has nothing to redraw."""
        events = self.run.drain()
        if events or not self.state.done:
            steps = self.run.steps_done()
            if steps is not None:
                self.state.follow(steps)
            self.feed(events, throttle=True)

    def feed(self, events: Iterable[Event], *, throttle: bool = False) -> None:
        """Apply events and update the widgets (also used by tests to replay a run)."""
        was_done = self.state.done
        for event in events:
            self.state.apply(event)
        self.refresh_view(throttle=throttle)
        if self.state.done != was_done:
            self.refresh_bindings()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is not self.worker or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
            WorkerState.CANCELLED,
        ):
            return
        self.drain()
        if event.state == WorkerState.ERROR and self.state.status != "failed":
            error = event.worker.error
            self.state.fail(f"{type(error).__name__}: {error}")
        elif self.state.status in ("starting", "running", "paused", "stopping"):
            self.state.status = "stopped" if event.state == WorkerState.CANCELLED else "finished"
        self.refresh_view()
        self.refresh_bindings()
        if self.exit_code is not None:
            self.app.exit(return_code=self.exit_code)

    # --- view ---------------------------------------------------------------------------------

    def refresh_view(self, *, throttle: bool = False) -> None:
        state = self.state
        now = time.monotonic()
        status = self._status_line()
        if status != self._status_shown:
            self._status_shown = status
            self.query_one("#run-status", Static).update(status, layout=False)
        if now - self._memory_at >= MEMORY_S or state.done:
            self._memory_at, self._memory_text = now, self.memory(state.device)
        self.query_one(StatsPanel).show(state, self._memory_text)
        self.query_one(WarningsList).show(state)
        self.query_one(NoticeLog).show(state)
        panel = self.query_one("#error-panel", Static)
        panel.display = bool(state.error)
        if state.error:
            detail = "\n".join(state.error_detail.strip().splitlines()[-4:])
            error, detail = printable(state.error), printable(detail, keep_newlines=True)
            message = Text.assemble(("run failed: ", "bold"), error, "\n", (detail, "dim"))
            panel.update(message)
        if state.task != self._task_shown:
            self._show_task(state.task)
        due = not throttle or state.done or now - self._charts_at >= CHART_S
        if state.curves_version != self._charts_version and due:
            self._charts_version, self._charts_at = state.curves_version, now
            self.query_one("#chart-loss", SeriesChart).show(
                {"train": state.train_loss, "val": state.val_loss_curve}
            )
            self.query_one("#chart-acc", SeriesChart).show(
                {"train": state.train_score, "val": state.val_score_curve}
            )
            self.query_one("#chart-lr", SeriesChart).show(state.lr)

    def _show_task(self, task: str) -> None:
        """The score chart and its tab for the run's task, once it is known (RunStarted)."""
        self._task_shown = task
        self.query_one(TabbedContent).get_tab("tab-acc").label = SCORE_TABS[task]
        self.query_one("#chart-acc", SeriesChart).log_y = task == headline.REGRESSION

    def _status_line(self) -> Text:
        state = self.state
        parts = [self.run.preset_name, state.model, state.dataset]
        if state.grid_size is not None and not state.done:  # the stage of a grid schedule
            parts.append(f"grid {state.grid_size}")
        if state.done and state.summary is not None:
            test = state.test_score
            parts.append(f"test {score(state.task, test)}" if test is not None else "no test")
            parts.append("n: new run")
        return Text.assemble(
            (f" {state.status} ", STATUS_STYLE.get(state.status, "bold reverse")),
            " " + printable(" · ".join(p for p in parts if p)),  # a preset name may be a path
        )

    # --- keys ---------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "stop", "checkpoint"):
            return not self.state.done and self.worker is not None
        if action == "new_run":
            return self.state.done or self.worker is None
        return True

    def action_pause(self) -> None:
        paused = self.run.toggle_pause()
        if paused is not None:
            self.state.status = "paused" if paused else "running"
            self.refresh_view()

    def action_stop(self) -> None:
        self.run.stop()
        self.state.status = "stopping"
        self.state.notice("stop requested: writing a checkpoint")
        self.refresh_view()

    def action_checkpoint(self) -> None:
        if self.run.request_checkpoint():
            self.state.notice("checkpoint requested")
            self.refresh_view()

    def action_next_chart(self) -> None:
        tabs = self.query_one(TabbedContent)
        index = CHART_TABS.index(tabs.active) if tabs.active in CHART_TABS else -1
        tabs.active = CHART_TABS[(index + 1) % len(CHART_TABS)]

    def action_new_run(self) -> None:
        self.dismiss(None)

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def action_quit_run(self) -> None:
        """Quit; while training, ask first, then stop the trainer and exit once its thread ends."""
        if not self.running:
            self.app.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.stop_and_exit()

        self.app.push_screen(ConfirmDialog("Training is running. Stop it and quit?"), answered)

    def stop_and_exit(self, return_code: int = 0) -> None:
        """Stop the run (checkpoint, summary `stopped`) and exit the app with `return_code` as
        soon as the training thread has ended: `q` then `y`, and SIGHUP / SIGTERM."""
        self.exit_code = return_code
        if self.state.run_dir:
            self.app.stopped_run = (self.state.run_dir, self.state.epoch)  # type: ignore[attr-defined]
        self.action_stop()

    def on_unmount(self) -> None:
        """However the app ends, never leave a training thread behind."""
        if self.worker is not None and not self.run.done.is_set():
            self.run.stop()
            self.run.done.wait(JOIN_TIMEOUT_S)

"""What the dashboard knows about a run, kept apart from the widgets that show it.

`TrainingRun` is the only object shared between the training thread and the UI thread: the trainer's
sink appends events to a deque (thread-safe, never blocks, never touches a widget) and the UI drains
it on a timer. `RunState` folds the drained events into plain numbers and series; it knows nothing
about Textual, so the dashboard can coalesce a burst of step events into one redraw, and tests and
snapshots can feed it deterministic events instead of a live run.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kan_engine import headline
from kan_engine.config import RunConfig
from kan_engine.events import (
    CheckpointWritten,
    EarlyStopped,
    EpochEnd,
    Event,
    Failed,
    Finished,
    GradNormWarning,
    GridUpdated,
    Notice,
    RunStarted,
    StepMetrics,
)
from kan_tui import run_label
from kan_tui.formatting import measure

if TYPE_CHECKING:
    from kan_engine.resume_plan import ResumePlan
    from kan_engine.trainer import Trainer

Point = tuple[float, float]
GRAD_HISTORY = 120  # grad-norm samples kept for the sparkline
MAX_WARNINGS = 200
MAX_NOTICES = 100
FINAL_STATUSES = ("finished", "early_stopped", "stopped", "failed")


@dataclass
class WarningRow:
    step: int
    norm: float
    threshold: float
    reason: str
    action: str
    layer: str = ""  # the first non-finite layer, when the trainer found it


@dataclass
class RunState:
    """Everything the dashboard draws, updated by `apply` one event at a time."""

    # starting, running, paused, stopping, then (as summary.json) finished, early_stopped,
    # stopped or failed
    status: str = "starting"
    run_dir: str = ""
    device: str = ""
    dataset: str = ""
    model: str = ""
    params: int = 0
    epochs: int = 0
    steps_per_epoch: int = 0
    batch_size: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    samples_per_s: float = 0.0
    task: str = headline.CLASSIFICATION  # the run's (RunStarted); the scores are its metric's
    # scores: the task's headline metric (`headline.metric`), accuracy or a regression's RMSE
    last_loss: float | None = None
    last_score: float | None = None
    val_loss: float | None = None
    val_score: float | None = None
    best_val_score: float | None = None
    best_epoch: int = 0
    test_score: float | None = None
    # a regression's metrics of the last epoch (val_rmse, val_r2, ...), the test's at the end
    metrics: dict[str, float] = field(default_factory=dict)
    grid_size: int | None = None  # the grid of the last epoch, under kan.grid_schedule
    grid_total: int = 0
    grid_per_layer: dict[str, int] = field(default_factory=dict)
    grid_last_step: int | None = None
    outside_grid: dict[str, float] = field(default_factory=dict)
    grad_norms: deque[float] = field(default_factory=lambda: deque(maxlen=GRAD_HISTORY))
    warnings: list[WarningRow] = field(default_factory=list)
    warning_total: int = 0
    notices: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    warnings_seen: int = 0  # rows ever appended to `warnings` / `notices` (the lists keep the tail)
    notices_seen: int = 0
    train_loss: list[Point] = field(default_factory=list)
    val_loss_curve: list[Point] = field(default_factory=list)
    train_score: list[Point] = field(default_factory=list)
    val_score_curve: list[Point] = field(default_factory=list)
    lr: dict[str, list[Point]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str = ""
    error_detail: str = ""
    curves_version: int = 0  # bumped when a series gains a point, so charts redraw only then

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def metric(self) -> str:
        """The name of the scores in the events and the summary: "acc" or "rmse"."""
        return headline.metric(self.task)

    def eta_seconds(self) -> float | None:
        """Remaining training steps at the last measured speed (validation time not included)."""
        if not (self.samples_per_s > 0 and self.steps_per_epoch and self.batch_size) or self.done:
            return None
        per_epoch = self.steps_per_epoch
        left = (self.epochs - self.epoch) * per_epoch + (per_epoch - self.step)
        return max(left, 0) * self.batch_size / self.samples_per_s

    def notice(self, text: str, level: str = "info") -> None:
        self.notices.append((level, text))
        self.notices_seen += 1
        del self.notices[:-MAX_NOTICES]

    def apply(self, event: Event) -> None:
        """Fold one event in. Unknown event types are ignored, so the engine may add new ones."""
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _started(self, event: RunStarted) -> None:
        config = event.config
        self.status = "running"
        self.run_dir = event.run_dir
        self.device = event.device
        self.dataset = event.dataset
        self.model = str(config.get("model", {}).get("name", ""))
        self.batch_size = int(config.get("train", {}).get("batch_size", 0))
        self.params = event.params.get("total", 0)
        self.epochs = event.epochs
        self.steps_per_epoch = event.steps_per_epoch
        self.epoch = event.start_epoch
        self.task = event.task
        resumed = f", resumed at epoch {event.start_epoch}" if event.start_epoch > 1 else ""
        self.notice(
            f"{self.model} on {event.dataset} "
            f"({event.train_size}/{event.val_size}/{event.test_size}), "
            f"{self.params:,} params, {event.device}{resumed}"
        )

    def _step(self, event: StepMetrics) -> None:
        x = event.epoch - 1 + event.step / event.steps_per_epoch
        if event.global_step >= self.global_step:  # `follow` may be ahead of the sampled steps
            self.epoch, self.step, self.global_step = event.epoch, event.step, event.global_step
        self.steps_per_epoch = event.steps_per_epoch
        self.samples_per_s = event.samples_per_s
        self.last_loss, self.last_score = event.loss, getattr(event, self.metric)
        self.grad_norms.append(event.grad_norm)
        _add(self.train_loss, x, event.loss)
        _add(self.train_score, x, self.last_score)
        for group, value in event.lr.items():
            _add(self.lr.setdefault(group, []), x, value)
        self.curves_version += 1

    def follow(self, global_step: int) -> None:
        """Move the epoch / step position to the trainer's step counter while a run goes on:
        step events come every `log_every` steps only, and an epoch line or a pause would
        otherwise leave the position behind."""
        spe = self.steps_per_epoch
        if self.done or not spe or global_step <= self.global_step:
            return
        self.global_step = global_step
        self.epoch, self.step = global_step // spe + 1, global_step % spe
        if self.step == 0:  # at an epoch's end: that epoch, all steps done
            self.epoch, self.step = self.epoch - 1, spe

    def _epoch(self, event: EpochEnd) -> None:
        x = float(event.epoch)
        if self.epoch <= event.epoch:  # `follow` may already be in the next epoch
            self.epoch, self.step = event.epoch, self.steps_per_epoch
        values, metric = headline.epoch_values(event), self.metric
        self.val_loss, self.val_score = event.val_loss, values.get(f"val_{metric}")
        self.best_val_score, self.best_epoch = values.get(f"best_val_{metric}"), event.best_epoch
        self.metrics.update(event.metrics)
        self.grid_size = event.grid_size
        self.samples_per_s = event.samples_per_s or self.samples_per_s
        self.grid_total = event.grid_updates
        self.grid_per_layer.update(event.grid_updates_per_layer)
        self.outside_grid = dict(event.outside_grid)
        self.warning_total = max(self.warning_total, event.grad_norm_warnings)
        if values.get(f"test_{metric}") is not None:
            self.test_score = values[f"test_{metric}"]
        _add(self.val_loss_curve, x, event.val_loss)
        _add(self.val_score_curve, x, self.val_score)
        if event.skipped_steps:
            self.notice(f"epoch {event.epoch}: {event.skipped_steps} steps skipped", "warning")
        self.curves_version += 1

    def _grid(self, event: GridUpdated) -> None:
        self.grid_total = event.total
        self.grid_per_layer[event.layer] = event.count
        self.grid_last_step = event.global_step

    def _warning(self, event: GradNormWarning) -> None:
        self.warning_total += 1
        self.warnings_seen += 1
        self.warnings.append(
            WarningRow(
                event.global_step,
                event.norm,
                event.threshold,
                event.reason,
                event.action,
                event.layer or "",
            )
        )
        del self.warnings[:-MAX_WARNINGS]
        if event.reason == "non-finite":
            where = f" in {event.layer}" if event.layer else ""
            self.notice(
                f"step {event.global_step}: non-finite gradient{where}: {event.action}", "warning"
            )

    def _notice(self, event: Notice) -> None:
        self.notice(event.message, event.level)

    def _checkpoint(self, event: CheckpointWritten) -> None:
        if event.reason in ("manual", "stop"):
            self.notice(f"checkpoint ({event.reason}, epoch {event.epoch}): {event.path}")

    def _early_stop(self, event: EarlyStopped) -> None:
        best = measure(self.task, getattr(event, f"best_val_{self.metric}"))
        self.notice(
            f"early stop at epoch {event.epoch}: no better val {self.metric} for "
            f"{event.patience} epochs (best {best} at epoch {event.best_epoch})",
            "warning",
        )

    def _finished(self, event: Finished) -> None:
        summary = event.summary
        self.summary = summary
        status = summary.get("status")
        self.status = status if status in FINAL_STATUSES else "finished"
        test, best = summary.get(f"test_{self.metric}"), summary.get(f"best_val_{self.metric}")
        if isinstance(test, (int, float)):
            self.test_score = float(test)
        if isinstance(best, (int, float)):
            self.best_val_score = float(best)
            self.best_epoch = int(summary.get("best_epoch", self.best_epoch))
        for name in headline.REGRESSION_METRICS:  # a regression's final test (None otherwise)
            value = summary.get(f"test_{name}")
            if isinstance(value, (int, float)):
                self.metrics[f"test_{name}"] = float(value)
        folder = summary.get("run_dir", self.run_dir) or "the run folder"
        self.notice(f"{self.status}: summary in {folder}")

    def _failed(self, event: Failed) -> None:
        self.fail(event.error, event.traceback)

    def fail(self, error: str, detail: str = "") -> None:
        self.status = "failed"
        self.error = error
        self.error_detail = detail or self.error_detail


def _add(series: list[Point], x: float, y: float | None) -> None:
    """Append a point, dropping non-finite values (a diverged step must not break the chart)
    and absent ones (a metric the epoch did not measure)."""
    if y is not None and math.isfinite(y):
        series.append((x, y))


_HANDLERS: dict[type[Event], Any] = {
    RunStarted: RunState._started,
    StepMetrics: RunState._step,
    EpochEnd: RunState._epoch,
    GridUpdated: RunState._grid,
    GradNormWarning: RunState._warning,
    Notice: RunState._notice,
    CheckpointWritten: RunState._checkpoint,
    EarlyStopped: RunState._early_stop,
    Finished: RunState._finished,
    Failed: RunState._failed,
}


class TrainingRun:
    """The trainer, its thread and its event queue, as seen from both sides.

    `work` runs in the worker thread; every other method is called from the UI thread. A stop asked
    for before the trainer exists (torch still importing) is remembered and passed on as soon as
    it does, so `q` right after starting still ends the run promptly.
    """

    def __init__(
        self,
        config: RunConfig,
        preset_name: str,
        out_dir: Path,
        resume: ResumePlan | None = None,
    ) -> None:
        self.config = config
        self.preset_name = preset_name
        self.out_dir = out_dir
        self.resume = resume  # continue this run folder (`kan-tui resume RUN`) instead
        self.events: deque[Event] = deque()
        self.trainer: Trainer | None = None
        self.done = threading.Event()
        self._stop_requested = False

    def sink(self, event: Event) -> None:
        """The trainer's event sink: one O(1) append, safe from any thread."""
        self.events.append(event)

    def work(self) -> dict[str, Any]:
        """Build and run the trainer (worker thread). Exceptions propagate to the worker."""
        try:
            from kan_engine import data
            from kan_engine.trainer import Trainer

            if self.resume is not None:
                trainer = Trainer.from_run_dir(
                    self.resume.run_dir, sink=self.sink, plan=self.resume
                )
            else:
                # bad data is bad input: refused (KanError) before a run folder is made
                raw = data.read(self.config.data)
                config, label = run_label.for_preset(self.config, self.preset_name)
                trainer = Trainer(
                    config, sink=self.sink, out_dir=self.out_dir, preset_name=label, raw=raw
                )
            self.trainer = trainer
            if self._stop_requested:
                trainer.stop()
            return trainer.run()
        finally:
            self.done.set()

    def steps_done(self) -> int | None:
        """The trainer's own step counter, a host int it bumps every step: the dashboard's
        position between the sampled step events (no device read, no lock: an int is read
        whole). None before the trainer exists."""
        trainer = self.trainer
        return None if trainer is None else trainer.c.global_step

    def drain(self) -> list[Event]:
        """Take every event queued so far (UI thread)."""
        taken: list[Event] = []
        while self.events:
            taken.append(self.events.popleft())
        return taken

    def stop(self) -> None:
        self._stop_requested = True
        if self.trainer is not None:
            self.trainer.stop()

    def toggle_pause(self) -> bool | None:
        """Pause or resume; returns the new paused state, None when there is no trainer yet."""
        trainer = self.trainer
        if trainer is None:
            return None
        if trainer.paused:
            trainer.resume()
        else:
            trainer.pause()
        return trainer.paused

    def request_checkpoint(self) -> bool:
        if self.trainer is None:
            return False
        self.trainer.request_checkpoint()
        return True


def memory_in_use(device: str) -> str:
    """Device memory held by torch on CUDA, else this process's resident memory.

    Reads host-side counters only (no device sync), so it is cheap enough for the drain timer.
    """
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        allocated = torch.cuda.memory_allocated(device)
        reserved = torch.cuda.memory_reserved(device)
        return f"{allocated / 2**30:.2f}/{reserved / 2**30:.2f} GB"
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return f"{pages * os.sysconf('SC_PAGE_SIZE') / 2**20:.0f} MB RSS"
    except (OSError, ValueError, IndexError):
        import resource

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak"

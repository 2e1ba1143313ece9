"""Experiment trackers (`log.report_to`): the run's metrics where people already look.

Why a sink. The trainer already reports everything as typed events (`events.py`), read back from
the device at most once per `log_every` steps; a tracker is one more consumer of that stream, so it
adds no device sync and sees exactly what `metrics.jsonl` and the dashboard see. The run folder
stays the source of truth: a tracker that cannot start (not installed) or fails later (a full disk)
says so once, as a warning notice, and the run goes on without it.

TensorBoard is written through its own client (`torch.utils.tensorboard.SummaryWriter`) into
`<run>/tensorboard/`: step scalars against the global step (`step/...`), epoch scalars against
the epoch (`epoch/...`), the resolved config and the summary as text. A classification logs its
accuracies, a regression its RMSE, MAE and R² (and a grid schedule its grid size), under the
names of the epoch rows (`val_acc`, `val_rmse`, `test_r2`, `grid_size`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kan_engine.config import RunConfig
from kan_engine.events import EpochEnd, Event, Failed, Finished, Notice, RunStarted, StepMetrics

EventSink = Callable[[Event], None]
FOLDER = "tensorboard"  # inside the run folder


class Tracker(Protocol):
    name: str

    def __call__(self, event: Event) -> None: ...


class TensorBoardTracker:
    """Writes the event stream as TensorBoard scalars; opened at `RunStarted` (the run folder
    exists from then on), closed at `Finished` / `Failed`."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def __call__(self, event: Event) -> None:
        match event:
            case RunStarted():
                from torch.utils.tensorboard import SummaryWriter  # ImportError: not installed

                self.writer = SummaryWriter(log_dir=str(Path(event.run_dir) / FOLDER))
                self.writer.add_text("config", _code(event.config), 0)
            case StepMetrics() if self.writer is not None:
                step = event.global_step
                for key, value in step_scalars(event).items():
                    self.writer.add_scalar(f"step/{key}", value, step)
            case EpochEnd() if self.writer is not None:
                for key, value in epoch_scalars(event).items():
                    self.writer.add_scalar(f"epoch/{key}", value, event.epoch)
                self.writer.flush()
            case Finished() if self.writer is not None:
                self.writer.add_text("summary", _code(event.summary), 0)
                self.close()
            case Failed() if self.writer is not None:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def step_scalars(event: StepMetrics) -> dict[str, float]:
    """The numbers of a step event that a tracker plots: its task's training metric (accuracy,
    or a regression's RMSE; the other is None and left out) among them."""
    scalars = {"loss": event.loss, "acc": event.acc, "rmse": event.rmse}
    scalars |= {"grad_norm": event.grad_norm, "samples_per_s": event.samples_per_s}
    scalars |= {f"lr_{group}": lr for group, lr in event.lr.items()}
    return _numbers(scalars)


def epoch_scalars(event: EpochEnd) -> dict[str, float]:
    """The numbers of an epoch row that a tracker plots (running totals as they are recorded):
    a classification's accuracies or a regression's `metrics` (RMSE, MAE, R² of each split
    evaluated), whichever the row holds, and the grid of the epoch under a grid schedule."""
    scalars = {
        "train_loss": event.train_loss,
        "train_acc": event.train_acc,
        "val_loss": event.val_loss,
        "val_acc": event.val_acc,
        "best_val_acc": event.best_val_acc,
        "test_acc": event.test_acc,
        **event.metrics,
        "best_val_rmse": event.best_val_rmse,
        "grid_size": event.grid_size,
        "grid_updates": event.grid_updates,
        "grad_norm_warnings": event.grad_norm_warnings,
        "samples_per_s": event.samples_per_s,
    }
    scalars |= {f"outside_grid_{layer}": share for layer, share in event.outside_grid.items()}
    return _numbers(scalars)


def _numbers(scalars: dict[str, float | int | None]) -> dict[str, float]:
    """The scalars that hold a value, as floats: a metric of the other task (None) is no point."""
    return {key: float(value) for key, value in scalars.items() if value is not None}


TRACKERS: dict[str, Callable[[], Tracker]] = {"tensorboard": TensorBoardTracker}


def with_trackers(sink: EventSink, config: RunConfig) -> EventSink:
    """`sink`, and after it every tracker `log.report_to` names; `sink` itself when none."""
    trackers: list[Tracker] = [TRACKERS[name]() for name in config.log.report_to]
    if not trackers:
        return sink

    def tee(event: Event) -> None:
        sink(event)
        for tracker in list(trackers):
            try:
                tracker(event)
            except Exception as exc:  # any failure of a tracker costs the tracker, not the run
                trackers.remove(tracker)
                sink(Notice(_failure(tracker.name, exc), "warning"))

    return tee


def _failure(name: str, exc: Exception) -> str:
    if isinstance(exc, ImportError):
        extra = f"pip install 'kan-tui[{name}]'"  # each tracker is an extra of its own name
        return f"log.report_to: {name} is not installed ({extra}): not logging to it"
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"log.report_to: {name} failed ({reason}): not logging to it any more"


def _code(data: dict[str, Any]) -> str:
    """JSON as a Markdown code block: TensorBoard's text plugin renders Markdown."""
    return "```\n" + json.dumps(data, indent=2, default=str) + "\n```"

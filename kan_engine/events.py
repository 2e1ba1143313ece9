"""Typed events the trainer emits.

The trainer never calls into a UI. It hands these frozen dataclasses to a sink (any callable); the
headless reporter prints them, the TUI queues them and drains the queue on a timer, and the run
folder's `metrics.jsonl` stores them (`to_record`). Events hold plain Python values only (no
tensors), so they are cheap to pass between threads and to serialise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base class; `event` is the name used in `metrics.jsonl`."""

    event = "event"

    def to_record(self) -> dict[str, Any]:
        return {"event": self.event, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RunStarted(Event):
    event = "run_started"
    run_dir: str
    config: dict[str, Any]
    device: str
    params: dict[str, int]  # per group (cnn / kan / other) and "total"
    dataset: str
    train_size: int
    val_size: int
    test_size: int
    steps_per_epoch: int
    epochs: int
    start_epoch: int = 1  # > 1 when resuming
    data: str = ""  # one line: splits, input shape, classes, where it was read from
    classes: list[str] = field(default_factory=list)  # the class names, in label order
    task: str = "classification"  # or "regression" (`classes` then names the targets)
    # a resume's running totals so far (grid_updates_per_layer, grad_norm_warnings,
    # skipped_steps): what the epoch rows' totals count on from, so "this epoch" is this epoch's
    totals: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepMetrics(Event):
    """Sampled every `train.log_every` steps: the only moment values are read from the device."""

    event = "step"
    epoch: int
    step: int  # step within the epoch, 1-based
    global_step: int
    steps_per_epoch: int
    loss: float
    acc: float | None  # None for a regression, which has `rmse`
    lr: dict[str, float]
    grad_norm: float
    samples_per_s: float
    rmse: float | None = None  # regression: training RMSE over the interval, in target units


@dataclass(frozen=True)
class EpochEnd(Event):
    event = "epoch"
    epoch: int
    train_loss: float
    train_acc: float | None  # None for a regression: its metrics are in `metrics`
    val_loss: float
    val_acc: float | None
    lr: dict[str, float]
    grid_updates: int  # total so far, all layers
    grad_norm_warnings: int  # total so far
    seconds: float  # this epoch, training and validation
    best_epoch: int
    best_val_acc: float | None  # None for a regression (`best_val_rmse`)
    samples_per_s: float
    test_acc: float | None = None
    test_loss: float | None = None
    outside_grid: dict[str, float] = field(default_factory=dict)  # layer -> share of inputs
    grid_updates_per_layer: dict[str, int] = field(default_factory=dict)
    skipped_steps: int = 0
    train_seconds: float | None = None  # this epoch's training steps alone (no evaluation)
    task: str = "classification"  # or "regression"
    # regression: train_rmse, val_rmse / val_mae / val_r2, and test_* when tested, target units
    metrics: dict[str, float] = field(default_factory=dict)
    best_val_rmse: float | None = None  # regression: the best epoch's validation RMSE
    grid_size: int | None = None  # the grid this epoch trained on, under kan.grid_schedule


@dataclass(frozen=True)
class GridUpdated(Event):
    event = "grid_update"
    global_step: int
    layer: str
    count: int  # updates of this layer so far
    total: int  # updates of all layers so far


@dataclass(frozen=True)
class GradNormWarning(Event):
    event = "grad_norm_warning"
    global_step: int
    norm: float  # may be nan / inf
    threshold: float
    reason: str  # "spike", "vanishing", "non-finite"
    action: str  # what the trainer did: "clipped", "skipped step", "restored, lr halved"...
    layer: str | None = None  # first non-finite layer, when known


@dataclass(frozen=True)
class Notice(Event):
    """Anything worth a line that has no event of its own (input range report, LR halved...)."""

    event = "notice"
    message: str
    level: str = "info"  # "info" | "warning"


@dataclass(frozen=True)
class CheckpointWritten(Event):
    event = "checkpoint"
    path: str
    epoch: int
    reason: str  # "epoch", "best", "manual", "stop"


@dataclass(frozen=True)
class EarlyStopped(Event):
    event = "early_stop"
    epoch: int
    best_epoch: int
    best_val_acc: float | None  # None for a regression
    patience: int
    best_val_rmse: float | None = None  # regression


@dataclass(frozen=True)
class Finished(Event):
    event = "finished"
    summary: dict[str, Any]  # the contents of summary.json


@dataclass(frozen=True)
class Failed(Event):
    event = "failed"
    error: str
    traceback: str = ""


EventSink = Callable[[Event], None]

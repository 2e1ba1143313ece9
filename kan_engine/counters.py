"""What the training loop counts on the host, and the epoch's bookkeeping.

`Counters` is everything a resume must continue from: checkpoints store it whole
(`dataclasses.asdict`) and a resume rebuilds it from that dict, so a field added here must have a
default. `Window` holds the sums of the current logging interval; it is filled at read-back
(`PendingSteps.drain`), never per step, so counting costs no host sync.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from kan_engine.distributed import Dist
from kan_engine.events import EpochEnd
from kan_engine.monitor import StepHealth
from kan_engine.task import Task


@dataclass
class Counters:
    """Everything the loop counts that a resume must continue from (stored in checkpoints)."""

    global_step: int = 0
    grid_updates: dict[str, int] = field(default_factory=dict)
    grad_norm_warnings: int = 0
    skipped_steps: int = 0
    bad_streak: int = 0
    restores: int = 0
    best_val_acc: float = -1.0  # classification
    best_val_rmse: float = math.inf  # regression
    best_epoch: int = 0
    patience_from: int = 0  # early stopping counts stale epochs from here (an extended run)
    epochs_run: int = 0
    seconds: float = 0.0  # finished epochs
    # the epoch in progress
    epoch_loss: float = 0.0  # sum of per-sample losses of applied steps
    epoch_correct: float = 0.0  # regression: summed squared errors (`Task.step_stat`)
    epoch_samples: int = 0
    epoch_seconds: float = 0.0

    def add_step(self, health: StepHealth) -> None:
        """An applied step, read back: its sums join the epoch's, the bad streak is over."""
        self.bad_streak = 0
        self.epoch_loss += health.loss * health.n
        self.epoch_correct += health.correct
        self.epoch_samples += health.n

    def reduce_epoch_sums(self, dist: Dist) -> None:
        """The epoch's train sums of every rank, on every rank (a collective: at epoch end and
        before a stop's checkpoint, which so holds them whole)."""
        loss, correct, samples = dist.all_sum(
            [self.epoch_loss, self.epoch_correct, self.epoch_samples]
        )
        self.epoch_loss, self.epoch_correct, self.epoch_samples = loss, correct, round(samples)

    def patience_exhausted(self, patience: int) -> bool:
        """`patience` epochs without a better one, counted from the best epoch, or from the
        extension of an early-stopped run (0: never)."""
        stale_epochs = self.epochs_run - max(self.best_epoch, self.patience_from)
        return patience > 0 and stale_epochs >= patience

    def close_epoch(
        self,
        epoch: int,
        val: dict[str, float],
        test: dict[str, float] | None,
        *,
        task: Task,
        grid_size: int | None = None,
        lr: dict[str, float],
        outside_grid: dict[str, float],
        train_seconds: float,
    ) -> tuple[EpochEnd, bool]:
        """Count `epoch` as run (the best epoch too) and start the next one's sums; returns
        the epoch row and whether the validation metric (`task.selection`) improved on the
        best so far. `val` and `test` are `eval_split`'s metrics (test None when not run)."""
        selected = val[task.selection]
        best = self.best_val_rmse if task.regression else self.best_val_acc
        improved = task.better(selected, best if self.best_epoch else None)
        if improved:
            self.best_epoch = epoch
            if task.regression:
                self.best_val_rmse = selected
            else:
                self.best_val_acc = selected
        samples = max(self.epoch_samples, 1)
        train_stat = self.epoch_correct / samples
        test = test or {}
        metrics: dict[str, float] = {}
        if task.regression:
            metrics = {"train_rmse": math.sqrt(train_stat) if self.epoch_samples else math.nan}
            for split, scores in (("val", val), ("test", test)):
                metrics.update({f"{split}_{k}": v for k, v in scores.items() if k != "loss"})
        row = EpochEnd(
            epoch=epoch,
            train_loss=self.epoch_loss / samples if self.epoch_samples else float("nan"),
            train_acc=None if task.regression else train_stat,
            val_loss=val["loss"],
            val_acc=val.get("acc"),
            lr=lr,
            grid_updates=sum(self.grid_updates.values()),
            grad_norm_warnings=self.grad_norm_warnings,
            seconds=self.epoch_seconds,
            best_epoch=self.best_epoch,
            best_val_acc=None if task.regression else self.best_val_acc,
            samples_per_s=self.epoch_samples / max(train_seconds, 1e-9),
            test_acc=test.get("acc"),
            test_loss=test.get("loss"),
            outside_grid=outside_grid,
            grid_updates_per_layer=dict(self.grid_updates),
            skipped_steps=self.skipped_steps,
            train_seconds=train_seconds,
            task=task.kind,
            metrics=metrics,
            best_val_rmse=self.best_val_rmse if task.regression and self.best_epoch else None,
            grid_size=grid_size,
        )
        self.epochs_run = epoch
        self.seconds += self.epoch_seconds
        self.epoch_loss = self.epoch_correct = self.epoch_seconds = 0.0
        self.epoch_samples = 0
        return row, improved


@dataclass
class Window:
    """Host-side sums over the current logging interval (filled at read-back)."""

    loss: float = 0.0
    correct: float = 0.0  # regression: summed squared errors (`Task.step_stat`)
    samples: int = 0
    norm: float = float("nan")
    started: float = field(default_factory=time.perf_counter)

    def add_step(self, health: StepHealth) -> None:
        """An applied step, read back."""
        self.loss += health.loss * health.n
        self.correct += health.correct
        self.samples += health.n
        self.norm = health.norm

"""What a run says about itself: the `RunStarted` event, the final test and summary.json.

The summary is written when a new run starts (status `running`) and again when the run ends,
however it ends; the run history (`history.py`), `compare` and `resume` read it, so its keys are a
format: add keys, do not rename them. The final test of a finished or early-stopped run judges the
best epoch's weights (best.pt, the weight average where the run kept one), not the last ones.
"""

from __future__ import annotations

import contextlib
import functools
import traceback
from typing import Any

from kan_engine import data as data_mod
from kan_engine import models
from kan_engine.config import to_data
from kan_engine.counters import Counters
from kan_engine.events import Failed, Finished, Notice, RunStarted
from kan_engine.run_folder import RunFolder
from kan_engine.run_setup import eval_split
from kan_engine.train_step import TrainStep


class RunReport:
    """The start and end reports of one set-up run, written through `folder`."""

    def __init__(
        self, folder: RunFolder, step: TrainStep, data: data_mod.DataBundle, preset: str
    ) -> None:
        """`step`: the run's model and where it trains (`TrainStep`)."""
        self.folder, self.data, self.preset = folder, data, preset
        self.config, self.model, self.device = step.config, step.model, step.device
        self.amp_dtype, self.dist = step.amp_dtype, step.dist
        self.steps_per_epoch = step.steps_per_epoch

    def start(self, start_epoch: int, notices: list[Notice], c: Counters) -> None:
        """The run's first events: RunStarted (with the counters' totals, for a resume), then
        what set-up found worth a line."""
        sizes = self.data.sizes
        started = RunStarted(
            run_dir=str(self.folder.path),
            config=to_data(self.config),
            device=str(self.device),
            params=models.count_params(self.model),
            dataset=self.data.name,
            train_size=sizes["train"],
            val_size=sizes["val"],
            test_size=sizes["test"],
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.config.train.epochs,
            start_epoch=start_epoch,
            data=self.data.describe(),
            classes=list(self.data.class_names),
            task=self.data.task.kind,
            totals={
                "grid_updates_per_layer": dict(c.grid_updates),
                "grad_norm_warnings": c.grad_norm_warnings,
                "skipped_steps": c.skipped_steps,
            },
        )
        for event in (started, *notices):
            self.folder.emit(event)

    def finish(self, status: str, c: Counters) -> dict[str, Any]:
        """Test with the best weights (finished / early-stopped runs), write summary.json."""
        test: dict[str, float] = {}
        # rank 0 reads best.pt and hands its weights on: only rank 0 is sure to see the file
        load_best = functools.partial(self.folder.load_best, self.model, self.device)
        if status in ("finished", "early_stopped") and self.dist.on_main(load_best):
            self.dist.broadcast_state(self.model)
            batch_size = self.config.train.batch_size
            test = eval_split(self.model, self.data, "test", batch_size, self.amp_dtype, self.dist)
        summary = self.summary(status, c, test)
        self.folder.write_summary(summary)
        if status != "failed":
            self.folder.emit(Finished(summary))
        return summary

    def fail(self, exc: BaseException, c: Counters) -> None:
        """Report an unexpected error (called while handling it); tolerate a log or summary that
        cannot be written (a full disk is a likely cause)."""
        self.folder.report_failure(Failed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        with contextlib.suppress(Exception):
            self.finish("failed", c)

    def summary(
        self, status: str, c: Counters, test: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """summary.json; `test` is the final test's metrics (`eval_split`), None without one.
        A regression has its metrics under `best_val_rmse` and `test_rmse` / `_mae` / `_r2`,
        and None in the accuracy keys."""
        test = test or {}
        regression = self.data.task.regression
        scores: dict[str, Any] = {}
        if regression:
            scores["best_val_rmse"] = c.best_val_rmse if c.best_epoch else None
            scores.update({f"test_{k}": test.get(k) for k in ("rmse", "mae", "r2")})
        return {
            "status": status,
            "task": self.data.task.kind,
            "best_epoch": c.best_epoch,
            "best_val_acc": c.best_val_acc if c.best_epoch and not regression else None,
            "test_acc": test.get("acc"),
            "test_loss": test.get("loss"),
            **scores,
            "epochs_run": c.epochs_run,
            "seconds": c.seconds + c.epoch_seconds,
            "params": models.count_params(self.model),
            "device": str(self.device),
            "run_dir": str(self.folder.path),
            "preset": self.preset,
            "model": self.config.model.name,
            "dataset": self.config.data.dataset,
            "global_step": c.global_step,
            "grid_updates": sum(c.grid_updates.values()),
            "grid_updates_per_layer": dict(c.grid_updates),
            "grad_norm_warnings": c.grad_norm_warnings,
            "skipped_steps": c.skipped_steps,
            "restores": c.restores,
            "processes": self.dist.world,
        }

"""A run's headline metric, whichever its task: accuracy for a classification (higher is
better), RMSE for a regression (lower is better, in the target's units).

Why one place: the run history, `compare`, `eval`, TensorBoard, the CLI and the TUI each show
how good a run is from what it recorded, and would otherwise each branch on the task. The
records name the metric alike for both tasks (summary.json's `best_val_<m>` and `test_<m>`, a
step event's `<m>`, an epoch's `train_<m>` / `val_<m>` / `test_<m>`, a regression's nested under
`metrics`), so one name, `metric(kind)`, reads either. Records written before regression existed
carry no `task`: they are a classification's. Torch-free, since `runs list` reads it;
`task.Task` is the trainer's side of the same choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kan_engine.events import EpochEnd

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "REGRESSION_METRICS",
    "epoch_values",
    "kind_of",
    "metric",
]

CLASSIFICATION = "classification"
REGRESSION = "regression"
REGRESSION_METRICS = ("rmse", "mae", "r2")  # what a regression split reports beside its loss


def kind_of(record: Mapping[str, Any]) -> str:
    """The task of a summary or an event record; anything but "regression" (absent in old run
    folders, or damaged) is a classification, as every run was before."""
    return REGRESSION if record.get("task") == REGRESSION else CLASSIFICATION


def metric(kind: str) -> str:
    """The headline metric's name in the records of a `kind` run: "acc" or "rmse"."""
    return "rmse" if kind == REGRESSION else "acc"


def epoch_values(row: EpochEnd | Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's values by name for either task: the row's own fields, and a regression's
    metrics (nested under `metrics`: train_rmse, val_r2, ...) beside them."""
    record = row.to_record() if isinstance(row, EpochEnd) else dict(row)
    nested = record.get("metrics")
    return {**record, **nested} if isinstance(nested, dict) else record

"""Past runs: run folders read back into table rows, epoch curves and CSV.

Everything comes from the files a run writes (`runs.py`): `summary.json` for the headline numbers,
`metrics.jsonl` for the epoch rows, `config.toml` when the summary is not there yet. A folder that
cannot be read (no config, corrupt JSON) is skipped with a reason instead of failing the listing,
because one broken folder must not hide every other run. A row's numbers are its task's headline
metric (`headline`: accuracy, or a regression's RMSE).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kan_engine import headline, runs
from kan_engine.config import GROUPS
from kan_engine.errors import KanError, RunDirError

__all__ = [
    "CSV_COLUMNS",
    "RunRow",
    "csv_columns",
    "curves",
    "epoch_rows",
    "export_csv",
    "list_runs",
    "metrics_csv",
]

Point = tuple[float, float]

# Epoch-row fields in CSV order (a classification's; `csv_columns`); per-group LRs follow as
# lr_cnn, lr_kan, lr_other.
CSV_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "best_epoch", "best_val_acc", "grid_updates", "grad_norm_warnings", "skipped_steps",
    "seconds", "train_seconds", "samples_per_s",
)  # fmt: skip
# what stands in a regression's CSV where a classification has its accuracies
_REGRESSION_COLUMNS = {
    "train_acc": ("train_rmse",),
    "val_acc": ("val_rmse", "val_mae", "val_r2"),
    "test_acc": ("test_rmse", "test_mae", "test_r2"),
    "best_val_acc": ("best_val_rmse",),
}


@dataclass(frozen=True)
class RunRow:
    """One run folder as a table row."""

    path: Path
    started: float  # seconds since the epoch (from the folder name, else its mtime)
    preset: str
    model: str
    dataset: str
    status: str
    task: str  # classification or regression (`headline.kind_of`)
    best_val: float | None  # the task's headline metric (`headline.metric`): accuracy or RMSE
    test: float | None
    seconds: float | None
    epochs: int

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))


def _number(value: Any) -> float | None:
    """JSON numbers, and the strings runs.py writes for non-finite floats; None for the rest."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _started(run_dir: Path) -> float:
    stamp = run_dir.name[:15]
    try:
        return time.mktime(time.strptime(stamp, "%Y%m%d-%H%M%S"))
    except ValueError:
        return run_dir.stat().st_mtime


def read_row(run_dir: Path) -> RunRow:
    """The row of one run folder; RunDirError names the file that cannot be read, or the key of
    summary.json that holds the wrong type (a row must not show a made-up status or model)."""
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    path = run_dir / runs.SUMMARY
    summary = runs.read_summary(run_dir) if path.exists() else {}
    text = {key: _text(summary, key, path) for key in ("preset", "model", "dataset", "status")}
    status = text["status"] or "unknown"
    if status not in (*runs.STATUSES, "unknown"):
        raise RunDirError(f"{path}: status: not a run status (got {status!r})")
    epochs = summary.get("epochs_run")
    task = headline.kind_of(summary)
    metric = headline.metric(task)
    return RunRow(
        path=run_dir,
        started=_started(run_dir),
        preset=text["preset"] or runs.preset_of(run_dir),
        model=text["model"] or config.model.name,
        dataset=text["dataset"] or config.data.dataset,
        status=status,
        task=task,
        best_val=_number(summary.get(f"best_val_{metric}")),
        test=_number(summary.get(f"test_{metric}")),
        seconds=_number(summary.get("seconds")),
        epochs=epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 0,
    )


def _text(summary: dict[str, Any], key: str, path: Path) -> str:
    """A text field of summary.json ("" when absent); any other type is a damaged summary."""
    value = summary.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RunDirError(f"{path}: {key}: not text (got {value!r:.40})")
    return value


def list_runs(out_dir: Path, depth: int = 3) -> tuple[list[RunRow], list[tuple[Path, str]]]:
    """(rows, newest first; skipped folders with the reason) for the run folders in `out_dir`.

    A folder is a run folder when it holds `config.toml` or `summary.json`; other folders (the
    `<stamp>-compare-<preset>/<model>/` parents of `kan-tui compare`, unrelated folders) are
    looked into, up to `depth` levels below `out_dir`.
    """
    out_dir = Path(out_dir)
    rows: list[RunRow] = []
    skipped: list[tuple[Path, str]] = []
    if not out_dir.is_dir():
        return rows, skipped
    try:
        entries = sorted(out_dir.iterdir())
    except OSError as exc:  # no permission to list it: a skipped row, as an unreadable run is
        return rows, [(out_dir, f"{out_dir}: cannot list: {exc.strerror or exc}")]
    for path in entries:
        if not path.is_dir():
            continue
        if not ((path / runs.CONFIG).exists() or (path / runs.SUMMARY).exists()):
            if depth > 1:
                nested, nested_skipped = list_runs(path, depth - 1)
                rows += nested
                skipped += nested_skipped
            continue
        try:
            rows.append(read_row(path))
        except (KanError, OSError) as exc:
            skipped.append((path, str(exc)))
    rows.sort(key=lambda row: (row.started, row.path.name), reverse=True)
    return rows, skipped


def epoch_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's `epoch` records from metrics.jsonl, in order."""
    return [r for r in runs.read_metrics(run_dir) if r.get("event") == "epoch"]


def curves(run_dir: Path) -> dict[str, list[Point]]:
    """Per-epoch series for charts: train_loss, val_loss and the train and val headline metric
    of either task (train_acc, val_acc; train_rmse, val_rmse), finite points only; the other
    task's series stay empty."""
    keys = ("train_loss", "val_loss", "train_acc", "val_acc", "train_rmse", "val_rmse")
    series: dict[str, list[Point]] = {key: [] for key in keys}
    for row in map(headline.epoch_values, epoch_rows(run_dir)):
        epoch = _number(row.get("epoch"))
        for key, points in series.items():
            value = _number(row.get(key))
            if epoch is not None and value is not None and math.isfinite(value):
                points.append((epoch, value))
    return series


def csv_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The CSV fields of these epoch rows: CSV_COLUMNS, a regression's metrics in place of the
    accuracies (the task of the first row: one run has one), and `grid_size` where a grid
    schedule recorded it (each stage's grid, next to the metrics it reached)."""
    columns = CSV_COLUMNS
    if rows and headline.kind_of(rows[0]) == headline.REGRESSION:
        columns = tuple(c for column in columns for c in _REGRESSION_COLUMNS.get(column, (column,)))
    if any(row.get("grid_size") is not None for row in rows):
        columns += ("grid_size",)
    return columns


def metrics_csv(run_dir: Path) -> str:
    """The epoch rows as CSV text (one line per epoch, header first)."""
    rows = [headline.epoch_values(row) for row in epoch_rows(run_dir)]
    columns = csv_columns(rows)
    header = [*columns, *(f"lr_{group}" for group in GROUPS)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        lrs = row.get("lr") if isinstance(row.get("lr"), dict) else {}
        values = [row.get(column) for column in columns]
        values += [lrs.get(group) for group in GROUPS]
        writer.writerow(["" if value is None else value for value in values])
    return buffer.getvalue()


def export_csv(run_dir: Path, path: Path | None = None) -> Path:
    """Write the epoch metrics as CSV (atomically); default `<run_dir>/metrics.csv`."""
    run_dir = Path(run_dir)
    runs.read_config(run_dir)  # a clear error for a folder that is not a run
    target = Path(path) if path is not None else run_dir / "metrics.csv"
    runs.write_file(target, metrics_csv(run_dir))
    return target

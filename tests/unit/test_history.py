"""Run history: real run folders (one short digits run, one short regression), broken ones,
old ones, CSV export."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, regression_overrides

from kan_engine import history, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import RunDirError
from kan_engine.trainer import Trainer


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-epoch run of the kan baseline on digits (module-wide: a few seconds)."""
    config = apply_overrides(RunConfig(), {**TINY, "train.batch_size": 256}, source="test")
    out = tmp_path_factory.mktemp("history") / "runs"
    trainer = Trainer(config, sink=lambda event: None, out_dir=out, preset_name="tiny")
    trainer.run()
    return trainer.run_dir


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 2-epoch regression (a flat KAN on a function table, grid 3 then 5)."""
    tmp = tmp_path_factory.mktemp("regression")
    overrides = regression_overrides(tmp, **{"data.test_every_epoch": True})
    config = apply_overrides(RunConfig(), overrides, source="test")
    trainer = Trainer(config, sink=lambda event: None, out_dir=tmp / "runs", preset_name="fit")
    trainer.run()
    return trainer.run_dir


def copy_run(run: Path, out: Path, name: str) -> Path:
    target = out / name
    shutil.copytree(run, target)
    return target


def test_runs_list_reads_real_run_folders(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    older = copy_run(real_run, out, "20240101-090000-tiny")
    newer = copy_run(real_run, out, "20250101-090000-tiny")
    rows, skipped = history.list_runs(out)
    assert [row.path for row in rows] == [newer, older]  # newest first
    assert skipped == []
    row = rows[0]
    summary = json.loads((real_run / runs.SUMMARY).read_text())
    assert (row.preset, row.model, row.dataset, row.status) == ("tiny", "kan", "digits", "finished")
    assert row.task == "classification"
    assert row.best_val == summary["best_val_acc"] and row.test == summary["test_acc"]
    assert row.seconds == summary["seconds"] > 0 and row.epochs == 2
    assert row.date == "2025-01-01 09:00"


def test_a_regression_row_holds_its_rmse(regression_run: Path) -> None:
    row = history.read_row(regression_run)
    summary = json.loads((regression_run / runs.SUMMARY).read_text())
    assert (row.task, row.model, row.dataset) == ("regression", "flat_kan", "csv")
    assert row.best_val == summary["best_val_rmse"] and row.test == summary["test_rmse"]
    assert row.best_val is not None and row.test is not None


def test_an_old_run_without_a_task_reads_as_a_classification(
    real_run: Path, tmp_path: Path
) -> None:
    run = copy_run(real_run, tmp_path, "20240101-090000-tiny")
    summary = json.loads((run / runs.SUMMARY).read_text())
    del summary["task"]
    (run / runs.SUMMARY).write_text(json.dumps(summary))
    lines = (run / runs.METRICS).read_text().splitlines()
    old = [{k: v for k, v in json.loads(line).items() if k != "task"} for line in lines]
    (run / runs.METRICS).write_text("".join(json.dumps(r) + "\n" for r in old))
    row = history.read_row(run)
    assert (row.task, row.best_val, row.test) == (
        "classification",
        summary["best_val_acc"],
        summary["test_acc"],
    )
    assert history.metrics_csv(run) == history.metrics_csv(real_run)
    assert history.curves(run) == history.curves(real_run)


def test_broken_folders_are_skipped_with_a_reason(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    good = copy_run(real_run, out, "20250101-090000-tiny")
    corrupt = copy_run(real_run, out, "20250102-090000-tiny")
    (corrupt / runs.SUMMARY).write_text("{not json")
    no_config = copy_run(real_run, out, "20250103-090000-tiny")
    (no_config / runs.CONFIG).unlink()
    running = copy_run(real_run, out, "20250104-090000-tiny")
    (running / runs.SUMMARY).unlink()  # killed before its first summary: still listed
    (out / "notes").mkdir()  # an unrelated folder is neither a row nor a complaint
    rows, skipped = history.list_runs(out)
    assert [row.path for row in rows] == [running, good]
    assert rows[0].status == "unknown"
    reasons = dict(skipped)
    assert "summary.json: not readable JSON" in reasons[corrupt]
    assert "config.toml missing" in reasons[no_config]
    assert history.list_runs(tmp_path / "nowhere") == ([], [])


def test_nested_compare_folders_are_listed(real_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    parent = out / "20250101-090000-compare-lite" / "kan"
    nested = copy_run(real_run, parent, "20250101-090001-lite")
    rows, _ = history.list_runs(out)
    assert [row.path for row in rows] == [nested]


def test_csv_export_has_one_row_per_epoch(real_run: Path, tmp_path: Path) -> None:
    target = history.export_csv(real_run, tmp_path / "m.csv")
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    epochs = history.epoch_rows(real_run)
    assert [int(r["epoch"]) for r in table] == [1, 2]
    for line, record in zip(table, epochs, strict=True):
        assert float(line["val_acc"]) == record["val_acc"]
        assert float(line["lr_kan"]) == record["lr"]["kan"]
        assert line["test_acc"] == ""  # not evaluated every epoch: empty, not "None"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    assert history.export_csv(real_run) == real_run / "metrics.csv"


def test_a_regressions_csv_has_its_metrics_and_grid_sizes(regression_run: Path) -> None:
    table = list(csv.DictReader(io.StringIO(history.metrics_csv(regression_run))))
    header = list(table[0])
    assert "train_acc" not in header and "best_val_acc" not in header
    for metric in ("train_rmse", "val_rmse", "val_mae", "val_r2", "test_rmse", "best_val_rmse"):
        assert metric in header
    epochs = history.epoch_rows(regression_run)
    for line, record in zip(table, epochs, strict=True):
        assert float(line["val_rmse"]) == record["metrics"]["val_rmse"]
        assert float(line["test_r2"]) == record["metrics"]["test_r2"]
    assert [line["grid_size"] for line in table] == ["3", "5"]  # kan.grid_schedule's stages


def test_a_regressions_curves_are_rmse(regression_run: Path) -> None:
    series = history.curves(regression_run)
    assert [x for x, _ in series["val_rmse"]] == [1.0, 2.0]
    assert [x for x, _ in series["train_rmse"]] == [1.0, 2.0]
    assert series["val_acc"] == series["train_acc"] == []


def test_curves_skip_non_finite_points(real_run: Path, tmp_path: Path) -> None:
    run = copy_run(real_run, tmp_path, "20250101-090000-tiny")
    with (run / runs.METRICS).open("a") as handle:
        handle.write(json.dumps({"event": "epoch", "epoch": 3, "val_loss": "nan", "val_acc": 0.5}))
        handle.write("\n")
    series = history.curves(run)
    assert [x for x, _ in series["val_loss"]] == [1.0, 2.0]
    assert [x for x, _ in series["val_acc"]] == [1.0, 2.0, 3.0]


def test_export_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run folder"):
        history.export_csv(tmp_path)


def test_runs_commands(real_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kan_tui.cli import app

    out = tmp_path / "runs"
    run = copy_run(real_run, out, "20250101-090000-tiny")
    broken = copy_run(real_run, out, "20250102-090000-tiny")
    (broken / runs.CONFIG).unlink()
    listed = CliRunner().invoke(app, ["runs", "list", "--out", str(out)])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if run.name in line)
    assert "tiny" in row and "kan" in row and "digits" in row and "finished" in row
    assert row.count("%") == 2  # best val and test: accuracies
    assert f"skipped {broken}" in listed.stdout
    target = tmp_path / "out.csv"
    exported = CliRunner().invoke(app, ["runs", "export", str(run), "--csv", str(target)])
    assert exported.exit_code == 0 and target.read_text() == history.metrics_csv(run)
    printed = CliRunner().invoke(app, ["runs", "export", str(run), "--csv", "-"])
    assert printed.stdout == history.metrics_csv(run)
    missing = CliRunner().invoke(app, ["runs", "export", str(tmp_path)])
    assert missing.exit_code == 2 and "not a run folder" in missing.stderr


def test_runs_list_shows_a_regressions_rmse(regression_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kan_tui.cli import app
    from kan_tui.formatting import sig

    out = tmp_path / "runs"
    copy_run(regression_run, out, "20250101-090000-fit")
    summary = json.loads((regression_run / runs.SUMMARY).read_text())
    listed = CliRunner().invoke(app, ["runs", "list", "--out", str(out)])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "fit" in line)
    assert f"rmse {sig(summary['best_val_rmse'])}" in row
    assert f"rmse {sig(summary['test_rmse'])}" in row and "%" not in row

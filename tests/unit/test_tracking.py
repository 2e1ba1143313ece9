"""`log.report_to`: the event stream written to TensorBoard, and a tracker that fails is a warning.

The TensorBoard file is read back with TensorBoard's own `EventAccumulator`, and its values are
compared with the rows of `metrics.jsonl` that the same run wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kan_engine import tracking
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.events import Event, Notice
from kan_engine.trainer import Trainer


def rows(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


def test_a_run_writes_tensorboard_scalars_equal_to_its_metrics(
    tiny_config: Callable[..., RunConfig], runs_dir: Path
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(**{"log.report_to": ["tensorboard"], "data.test_every_epoch": True})
    trainer = Trainer(config, sink=lambda e: None, out_dir=runs_dir, preset_name="tb")
    assert trainer.run()["status"] == "finished"
    board = EventAccumulator(str(trainer.run_dir / tracking.FOLDER))
    board.Reload()
    epochs = rows(trainer.run_dir, "epoch")
    for key in ("val_acc", "train_loss", "test_acc"):
        logged = [(s.step, s.value) for s in board.Scalars(f"epoch/{key}")]
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in epochs], key
    steps = rows(trainer.run_dir, "step")
    logged = [(s.step, s.value) for s in board.Scalars("step/loss")]
    assert logged == [(r["global_step"], pytest.approx(r["loss"], rel=1e-6)) for r in steps]
    tags = {tag.split("/")[1] for tag in board.Tags()["scalars"]}
    assert "lr_kan" in tags and not {"rmse", "val_rmse", "grid_size"} & tags


def test_a_regression_writes_its_rmse_mae_r2_and_grid_size(
    regression_config: Callable[..., RunConfig], runs_dir: Path
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = regression_config(**{"log.report_to": ["tensorboard"], "data.test_every_epoch": True})
    seen: list[Event] = []
    trainer = Trainer(config, sink=seen.append, out_dir=runs_dir, preset_name="tb")
    assert trainer.run()["status"] == "finished"
    assert not [e for e in seen if isinstance(e, Notice) and "report_to" in e.message]
    board = EventAccumulator(str(trainer.run_dir / tracking.FOLDER))
    board.Reload()
    epochs = rows(trainer.run_dir, "epoch")
    keys = [f"{split}_{m}" for split in ("val", "test") for m in ("rmse", "mae", "r2")]
    for key in ("train_rmse", *keys):
        logged = [(s.step, s.value) for s in board.Scalars(f"epoch/{key}")]
        expected = [(r["epoch"], pytest.approx(r["metrics"][key], rel=1e-6)) for r in epochs]
        assert logged == expected, key
    assert [(s.step, s.value) for s in board.Scalars("epoch/grid_size")] == [(1, 3.0), (2, 5.0)]
    best = [(s.step, s.value) for s in board.Scalars("epoch/best_val_rmse")]
    assert best == [(r["epoch"], pytest.approx(r["best_val_rmse"], rel=1e-6)) for r in epochs]
    steps = rows(trainer.run_dir, "step")
    logged = [(s.step, s.value) for s in board.Scalars("step/rmse")]
    assert logged == [(r["global_step"], pytest.approx(r["rmse"], rel=1e-6)) for r in steps]
    tags = {tag.split("/")[1] for tag in board.Tags()["scalars"]}
    assert not {"acc", "train_acc", "val_acc", "best_val_acc", "test_acc"} & tags


def test_a_tracker_that_fails_is_one_warning_and_the_run_goes_on(
    tiny_config: Callable[..., RunConfig], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        name = "tensorboard"

        def __call__(self, event: Event) -> None:
            raise ImportError("No module named 'tensorboard'")

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", Broken)
    seen: list[Event] = []
    config = tiny_config(**{"log.report_to": "tensorboard"})
    summary = Trainer(config, sink=seen.append, out_dir=runs_dir, preset_name="tb").run()
    assert summary["status"] == "finished"
    warnings = [e for e in seen if isinstance(e, Notice) and "report_to" in e.message]
    assert len(warnings) == 1 and "not installed" in warnings[0].message
    assert "pip install 'kan-tui[tensorboard]'" in warnings[0].message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("tensorboard", ["tensorboard"]),
        ("none", []),
        ("", []),
        (["tensorboard"], ["tensorboard"]),
        ("tensorboard, tensorboard", ["tensorboard"]),
    ],
)
def test_report_to_takes_names_a_list_or_none(value: object, expected: list[str]) -> None:
    assert apply_overrides(RunConfig(), {"log.report_to": value}).log.report_to == expected


def test_an_unknown_tracker_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="log.report_to"):
        apply_overrides(RunConfig(), {"log.report_to": "comet"})


def mlflow_run(runs_dir: Path, run_dir: Path):  # the MLflow run of a run folder, and its client
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_dir.resolve() / tracking.MLFLOW_STORE}")
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags[tracking.RUN_TAG] == str(run_dir.resolve())
    return client, run


def test_a_run_writes_mlflow_metrics_equal_to_its_metrics_and_resumes_into_them(
    tiny_config: Callable[..., RunConfig], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tiny_config(**{"log.report_to": ["mlflow"], "train.epochs": 2})
    seen: list[Event] = []

    def stop_after_epoch_one(event: Event) -> None:
        seen.append(event)
        if getattr(event, "event", "") == "epoch" and event.epoch == 1:
            trainer.stop()

    trainer = Trainer(config, sink=stop_after_epoch_one, out_dir=runs_dir, preset_name="ml")
    assert trainer.run()["status"] == "stopped"
    client, run = mlflow_run(runs_dir, trainer.run_dir)
    assert run.info.status == "KILLED"
    assert run.data.params["optim.lr"] == str(config.optim.lr)
    resumed = Trainer.from_run_dir(trainer.run_dir, sink=seen.append)
    assert resumed.run()["status"] == "finished"
    client, run = mlflow_run(runs_dir, trainer.run_dir)  # one MLflow run for the folder
    assert run.info.status == "FINISHED"
    epochs = rows(trainer.run_dir, "epoch")
    for key in ("val_acc", "train_loss"):
        history = client.get_metric_history(run.info.run_id, f"epoch/{key}")
        logged = sorted((m.step, m.value) for m in history)
        assert logged == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in epochs], key
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    (test_acc,) = client.get_metric_history(run.info.run_id, "summary/test_acc")
    assert test_acc.value == pytest.approx(summary["test_acc"])
    assert not [e for e in seen if isinstance(e, Notice) and "report_to" in e.message]


def test_mlflow_honours_its_tracking_uri(
    tiny_config: Callable[..., RunConfig], runs_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    pytest.importorskip("mlflow")
    store = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    config = tiny_config(**{"log.report_to": ["mlflow"]})
    Trainer(config, sink=lambda e: None, out_dir=runs_dir, preset_name="ml").run()
    assert store.is_file() and not (runs_dir / tracking.MLFLOW_STORE).exists()


def test_a_run_logs_to_wandb_offline_into_its_folder(
    tiny_config: Callable[..., RunConfig], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_DIR", str(runs_dir / "elsewhere"))  # init's dir= wins over it
    config = tiny_config(**{"log.report_to": ["wandb"], "data.test_every_epoch": True})
    seen: list[Event] = []
    trainer = Trainer(config, sink=seen.append, out_dir=runs_dir, preset_name="wb")
    assert trainer.run()["status"] == "finished"
    assert not [e for e in seen if isinstance(e, Notice) and "report_to" in e.message]
    (record,) = (trainer.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    logged = record.read_bytes()  # W&B's own record file: the keys are stored as text
    for key in (b"epoch/val_acc", b"step/loss", b"global_step", b"test_acc"):
        assert key in logged, key


def test_a_run_logs_to_trackio_in_its_store_and_keeps_its_log_clean(tmp_path: Path) -> None:
    pytest.importorskip("trackio")
    import os
    import sqlite3
    import subprocess
    import sys

    store = tmp_path / "trackio"  # trackio reads $TRACKIO_DIR once, at import: a process of its own
    env = {**os.environ, "TRACKIO_DIR": str(store), "KAN_TUI_CONFIG": str(tmp_path / "config")}
    done = subprocess.run(
        [sys.executable, "-m", "kan_tui", "run", "--headless", "--dataset", "digits", "--model",
         "kan", "--epochs", "2", "--device", "cpu", "--report-to", "trackio", "--out",
         str(tmp_path / "runs")],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Trackio" not in done.stdout and "report_to" not in done.stdout + done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    with sqlite3.connect(store / f"{tracking.EXPERIMENT}.db") as db:
        logged = [json.loads(m) for (m,) in db.execute("select metrics from metrics")]
    epochs = [row for row in logged if "epoch/val_acc" in row]
    expected = rows(run_dir, "epoch")
    assert [row["epoch"] for row in epochs] == [r["epoch"] for r in expected]
    assert [row["epoch/val_acc"] for row in epochs] == pytest.approx(
        [r["val_acc"] for r in expected], rel=1e-6
    )

"""Headless runs: the reporter's output, exit codes, signals, and real runs through the CLI.

The reporter and the signal handling are tested with synthetic events and a stand-in trainer (fast,
exact); the end-to-end tests train a tiny model on `digits` (shipped with scikit-learn) for one
epoch through the real `kan-tui run --headless`.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import regression_args
from rich.console import Console
from typer.testing import CliRunner, Result

from kan_engine.errors import ConfigError
from kan_engine.events import (
    CheckpointWritten,
    EarlyStopped,
    EpochEnd,
    Event,
    Finished,
    GradNormWarning,
    Notice,
    RunStarted,
    StepMetrics,
)
from kan_tui import headless
from kan_tui.cli import app
from kan_tui.formatting import sig
from kan_tui.headless import HeadlessReporter

LRS = {"cnn": 0.004, "kan": 0.012, "other": 0.006}
SUMMARY = {
    "status": "finished",
    "best_epoch": 2,
    "best_val_acc": 0.861,
    "test_acc": 0.855,
    "epochs_run": 2,
    "seconds": 6.4,
    "params": {"cnn": 10, "kan": 20, "other": 5, "total": 35},
    "device": "cpu",
}


def started(epochs: int = 2) -> RunStarted:
    config = {"model": {"name": "kan"}, "train": {"batch_size": 32}, "optim": {"lr_mult": {}}}
    return RunStarted(
        run_dir="runs/x", config=config, device="cpu", params={"total": 35}, dataset="digits",
        train_size=1000, val_size=100, test_size=300, steps_per_epoch=32, epochs=epochs,
    )  # fmt: skip


def epoch_end(epoch: int, grad_norm_warnings: int = 0, **extra: Any) -> EpochEnd:
    return EpochEnd(
        epoch=epoch, train_loss=0.412, train_acc=0.853, val_loss=0.388, val_acc=0.861, lr=LRS,
        grid_updates=12, grad_norm_warnings=grad_norm_warnings, seconds=3.21, best_epoch=epoch,
        best_val_acc=0.861, samples_per_s=1000.0, **extra,
    )  # fmt: skip


def step(epoch: int, n: int) -> StepMetrics:
    return StepMetrics(
        epoch=epoch, step=n, global_step=n, steps_per_epoch=32, loss=0.5, acc=0.8, lr=LRS,
        grad_norm=0.7, samples_per_s=900.0,
    )  # fmt: skip


def report(events: list[Event], *, interactive: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=interactive, width=80, color_system=None)
    with HeadlessReporter(console, interactive=interactive) as reporter:
        for event in events:
            reporter(event)
    return out.getvalue()


def test_plain_output_has_one_line_per_epoch_and_a_summary() -> None:
    events = [started(), step(1, 10), epoch_end(1), step(2, 10), epoch_end(2), Finished(SUMMARY)]
    text = report(events, interactive=False)
    lines = text.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert epoch_lines == [
        f"epoch {n}/2  train_loss 0.412  train_acc 85.30%  val_loss 0.388  val_acc 86.10%  "
        f"lr 0.004  grid_updates_this_epoch {12 if n == 1 else 0}  3.2s"
        for n in (1, 2)  # the events hold running totals: 12 refits by epoch 1, none after
    ]
    assert lines[0].startswith("run runs/x: kan (35 params) on digits")
    assert "loss 0.5" not in text  # step events only drive the progress bars
    summary = [line for line in lines if line.startswith(("status", "test_acc"))]
    assert summary == ["status        finished", "test_acc      85.50%"]
    assert "\x1b[" not in text  # no escape codes in a log


def test_plain_output_reports_notices_warnings_and_stops() -> None:
    warnings = [
        GradNormWarning(global_step=n, norm=50.0, threshold=10.0, reason="spike", action="clipped")
        for n in range(headless.WARNINGS_PER_EPOCH + 3)
    ]
    events = [
        started(),
        Notice("inputs to kan.0: 0.3 % outside the grid"),
        *warnings,
        GradNormWarning(1, float("nan"), 10.0, "non-finite", "skipped step", layer="kan.1"),
        epoch_end(1, grad_norm_warnings=9, skipped_steps=1, test_acc=0.84),
        GradNormWarning(99, float("inf"), 10.0, "non-finite", "skipped step", layer="kan.1"),
        EarlyStopped(epoch=1, best_epoch=1, best_val_acc=0.861, patience=0),
        CheckpointWritten(path="runs/x/checkpoints/last.pt", epoch=1, reason="epoch"),
        CheckpointWritten(path="runs/x/checkpoints/last.pt", epoch=1, reason="stop"),
    ]
    lines = report(events, interactive=False).splitlines()
    assert "note: inputs to kan.0: 0.3 % outside the grid" in lines
    warned = [line for line in lines if line.startswith("warning: gradient norm")]
    # capped per epoch, the cap announced; the counter restarts with the next epoch; a warning
    # naming the non-finite layer is printed past the cap
    assert len(warned) == headless.WARNINGS_PER_EPOCH + 2
    assert "only counted" in warned[headless.WARNINGS_PER_EPOCH - 1]
    assert "non-finite in kan.1" in warned[-2] and "at step 1:" in warned[-2]
    assert "non-finite in kan.1" in warned[-1]
    epoch = next(line for line in lines if line.startswith("epoch 1/2"))
    assert "test_acc 84.00%" in epoch and "grad_warnings_this_epoch 9" in epoch
    assert "skipped_steps_this_epoch 1" in epoch
    assert any(line.startswith("early stop at epoch 1") for line in lines)
    assert [line for line in lines if line.startswith("checkpoint")] == [
        "checkpoint (stop, epoch 1): runs/x/checkpoints/last.pt"
    ]


class Clock:
    """A clock the test moves: progress lines depend on time, not on a sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_progress_lines_every_30_s_and_tenth_of_an_epoch() -> None:
    out = io.StringIO()
    clock = Clock()
    reporter = HeadlessReporter(Console(file=out, width=80), interactive=False, clock=clock)
    reporter(started())
    for n, at in [(2, 10.0), (4, 31.0), (5, 40.0), (6, 50.0), (8, 62.0), (9, 100.0)]:
        clock.now = at
        reporter(step(1, n))  # 32 steps per epoch: a tenth is 3.2 steps
    reporter(epoch_end(1))
    clock.now = 101.0
    reporter(step(2, 30))  # a new epoch: 30 s since its start have not passed
    lines = [line for line in out.getvalue().splitlines() if " step " in line]
    assert [line.split("  ")[1] for line in lines] == ["step 4/32", "step 8/32"]
    assert lines[0].startswith("epoch 1/2  step 4/32  loss 0.500 acc 80.00% lr 0.004 900/s")
    assert lines[0].endswith("epoch ETA 0:00:00")  # 28 steps x 32 samples at 900/s: 1 s


def test_no_finished_epoch_means_no_best_epoch_in_the_summary() -> None:
    rows = headless.summary_rows({"status": "stopped", "epochs_run": 0, "best_epoch": 0,
                                  "best_val_acc": -1.0, "test_acc": None})  # fmt: skip
    assert rows == {"status": "stopped", "epochs run": "0"}
    assert headless.summary_rows({"best_epoch": 3, "best_val_acc": "nan"})["best val_acc"] == "nan"


def test_the_batch_bar_follows_the_trainers_step_counter_between_step_events() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system=None)
    steps = [0]
    with HeadlessReporter(console, interactive=True) as reporter:
        reporter.follow(lambda: steps[0])
        reporter(started())  # 32 steps per epoch
        reporter(step(1, 20))
        steps[0] = 27  # seven more steps, no step event yet
        assert reporter._progress is not None
        reporter._progress.refresh()
        (batch,) = [t for t in reporter._progress.tasks if t.description == "batch"]
        assert batch.completed == 27
        steps[0] = 3  # behind the bar (a counter read late): never moves it back
        reporter._progress.refresh()
        assert batch.completed == 27


def test_terminal_output_draws_progress_and_keeps_epoch_lines() -> None:
    events = [started(), step(1, 16), step(1, 32), epoch_end(1), step(2, 16), Finished(SUMMARY)]
    text = report(events, interactive=True)
    assert "epoch 1/2  train_loss 0.412" in text
    assert "loss 0.500 acc 80.00% lr 0.004 900/s ETA" in text  # the batch bar's fields
    assert "summary" in text and "finished" in text


class FakeTrainer:
    """Stands in for Trainer: `run` does what the test says, `stop` records the request."""

    def __init__(self, action: Any) -> None:
        self.action = action
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1

    def run(self) -> dict[str, Any]:
        return self.action(self)


@pytest.mark.parametrize(
    ("status", "code"), [("finished", 0), ("early_stopped", 0), ("diverged", 1), ("failed", 1)]
)
def test_exit_code_follows_the_status(status: str, code: int) -> None:
    assert headless.train(FakeTrainer(lambda t: {"status": status})) == code


def test_a_crash_during_training_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    def crash(trainer: FakeTrainer) -> dict[str, Any]:
        raise RuntimeError("CUDA out of memory")

    assert headless.train(FakeTrainer(crash)) == 1
    assert capsys.readouterr().err == "error: training failed: RuntimeError: CUDA out of memory\n"


def test_user_errors_are_left_to_the_cli() -> None:
    def bad(trainer: FakeTrainer) -> dict[str, Any]:
        raise ConfigError("x.toml", "optim.lr", "must be > 0")

    with pytest.raises(ConfigError):
        headless.train(FakeTrainer(bad))


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(trainer: FakeTrainer) -> dict[str, Any]:
        raise KeyboardInterrupt  # what Trainer.run raises after its clean stop on Ctrl-C

    assert headless.train(FakeTrainer(interrupted)) == 130
    assert "kan-tui resume" in capsys.readouterr().err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_hangup_and_term_stop_the_run_cleanly(signum: int, code: int) -> None:
    def hung_up(trainer: FakeTrainer) -> dict[str, Any]:
        signal.raise_signal(signum)
        return {"status": "stopped" if trainer.stopped else "finished"}

    before = signal.getsignal(signum)
    trainer = FakeTrainer(hung_up)
    assert headless.train(trainer) == code
    assert trainer.stopped == 1
    assert signal.getsignal(signum) is before  # handlers restored


def test_a_second_signal_aborts() -> None:
    def stubborn(trainer: FakeTrainer) -> dict[str, Any]:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        return {"status": "finished"}

    trainer = FakeTrainer(stubborn)
    assert headless.train(trainer) == 143
    assert trainer.stopped == 1


# --- through the real CLI ------------------------------------------------------------------------

TINY = ["--dataset", "digits", "--model", "kan", "--epochs", "2", "--batch-size", "128",
        "--warmup-epochs", "0", "--device", "cpu", "--seed", "1"]  # fmt: skip


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_the_run_header_of_a_csv_names_its_classes_shape_and_splits(isolated: Path) -> None:
    pytest.importorskip("kan_engine.trainer")
    rows = ["a,b,c,animal"] + [
        f"{i % 7},{(i * 3) % 5},{i % 2},{('cat', 'dog', 'owl')[i % 3]}" for i in range(240)
    ]
    (isolated / "pets.csv").write_text("\n".join(rows) + "\n")
    args = ("--dataset", "csv", "--data-dir", "pets.csv", "--model", "kan", "--epochs", "1")
    result = cli("run", "--headless", *args, "--device", "cpu", "--out", "out")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    data = next(line for line in lines if line.startswith("data "))
    assert "3 features" in data and "3 classes" in data and "train" in data, data
    assert "classes cat, dog, owl" in lines


def test_headless_run_on_digits(isolated: Path) -> None:
    pytest.importorskip("kan_engine.trainer")
    result = cli("run", "--headless", *TINY, "--out", "out")
    assert result.exit_code == 0, result.output
    (run_dir,) = (isolated / "out").iterdir()
    assert run_dir.name.endswith("-lite-kan")  # labelled by what it is: lite's recipe, kan
    config = (run_dir / "config.toml").read_text()
    assert 'description = "lite preset, model kan"' in config
    for name in ("config.toml", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] in ("finished", "early_stopped")
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert "\x1b[" not in result.stdout

    evaluated = cli("eval", str(run_dir), "--split", "val", "--checkpoint", "last")
    assert evaluated.exit_code == 0, evaluated.output
    assert re.match(r"val accuracy \d{1,3}\.\d\d%  loss \d", evaluated.stdout), evaluated.stdout


def test_a_headless_regression_evaluates_to_its_rmse_mae_and_r2(isolated: Path) -> None:
    pytest.importorskip("kan_engine.trainer")
    from kan_engine import history

    result = cli("run", "--headless", *regression_args(isolated), "--out", "out")
    assert result.exit_code == 0, result.output
    (run_dir,) = (isolated / "out").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluated = cli("eval", str(run_dir))
    assert evaluated.exit_code == 0, evaluated.output
    expected = "  ".join(f"{m} {sig(summary[f'test_{m}'])}" for m in ("rmse", "mae", "r2"))
    assert evaluated.stdout.startswith(f"test {expected}  loss "), evaluated.stdout
    assert "accuracy" not in evaluated.stdout
    assert history.read_row(run_dir).task == "regression"


def test_missing_data_lists_the_places_looked(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kan_engine import datasets

    def offline(name: str, root: Path) -> None:
        raise OSError("no network (test)")

    monkeypatch.setattr(datasets, "_download", offline)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    empty = isolated / "empty"
    empty.mkdir()
    result = cli(
        "run", "--headless", "--dataset", "mnist", "--data-dir", str(empty), "--out", "new/runs"
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: data set 'mnist' not found")
    assert str(empty) in result.stderr and str(isolated / "cache") in result.stderr
    assert "--dataset digits" in result.stderr
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "\\n" not in result.stderr  # one readable line
    assert not (isolated / "new").exists()  # no run folder, nor the --out folders made for it


def test_eval_and_resume_need_a_run_folder(isolated: Path) -> None:
    pytest.importorskip("kan_engine.trainer")
    for command in ("eval", "resume"):
        headless_flag = ["--headless"] if command == "resume" else []
        result = cli(command, str(isolated / "nothing-here"), *headless_flag)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and "nothing-here" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(isolated: Path) -> None:
    """A real Ctrl-C after the first epoch line: exit 130, `stopped`, last.pt; then resume."""
    command = [sys.executable, "-m", "kan_tui", "run", "--headless", *TINY, "--epochs", "4",
               "--out", "out"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the reporter flushes every line: wait for the first epoch
        if line.startswith("epoch 1/4"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    (run_dir,) = (isolated / "out").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stopped"
    assert (run_dir / "checkpoints" / "last.pt").is_file()

    resumed = cli("resume", str(run_dir), "--headless")
    assert resumed.exit_code == 0, resumed.output
    rows = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert [row["epoch"] for row in rows if row["event"] == "epoch"] == [1, 2, 3, 4]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"

"""Ctrl-C at the edges of a run (issue 15): while it sets up, twice in a row, and during the
interpreter's shutdown after the summary. Real processes, synchronised on what they print."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kan_engine import data
from kan_engine.trainer import Trainer

RUN = [sys.executable, "-m", "kan_tui", "run", "--headless", "--dataset", "digits", "--model",
       "kan", "--device", "cpu", "--batch-size", "64"]  # fmt: skip


def test_ctrl_c_while_setting_up_keeps_no_run_folder(tiny_config, runs_dir, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "load", interrupted)
    trainer = Trainer(tiny_config(), sink=lambda e: None, out_dir=runs_dir)
    assert trainer.run_dir.is_dir()
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert not trainer.run_dir.exists()  # nothing was trained: nothing half-made is left


def start(out: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*RUN, "--epochs", str(epochs), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}")


def summary(out: Path) -> dict:
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "summary.json").read_text())


def test_two_quick_ctrl_c_give_exit_130_one_line_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start(out, epochs=200)
    wait_for(proc, "epoch 1/")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert summary(out)["status"] == "stopped"


def test_ctrl_c_after_the_summary_is_ignored(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start(out, epochs=1)
    wait_for(proc, "status")  # the summary table: the run has saved everything
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert summary(out)["status"] == "finished"

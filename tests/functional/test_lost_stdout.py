"""A headless run whose stdout goes away keeps training and ends with its summary (issue 15).

Real processes: `kan-tui run ... | head -1` (the reader closes the pipe after one line) and
`kan-tui run ... > /dev/full` (every write fails with ENOSPC).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = ["run", "--headless", "--dataset", "digits", "--model", "kan", "--epochs", "2",
       "--device", "cpu", "--batch-size", "128"]  # fmt: skip


def kan_tui(*args: str) -> list[str]:
    return [sys.executable, "-m", "kan_tui", *args]


def only_summary(out: Path) -> dict:
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "summary.json").read_text())


def test_a_closed_pipe_does_not_end_the_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with subprocess.Popen(
        kan_tui(*RUN, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=300)
    assert first.startswith(b"run ")
    assert code == 0, stderr
    assert "Traceback" not in stderr and "stdout is gone" in stderr
    assert only_summary(out)["status"] == "finished"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_stdout_does_not_end_the_run(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            kan_tui(*RUN, "--out", str(out)), stdout=full, stderr=subprocess.PIPE, timeout=300
        )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr and "No space left on device" in stderr
    assert only_summary(out)["status"] == "finished"


def test_without_a_terminal_run_trains_headless_instead_of_opening_the_tui(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = [a for a in RUN if a != "--headless"]
    done = subprocess.run(
        kan_tui(*args, "--epochs", "1", "--out", str(out)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "not a terminal: training headless" in done.stderr.decode()
    assert b"\x1b[" not in done.stdout  # no TUI escape codes in the file
    assert only_summary(out)["status"] == "finished"


def test_without_a_terminal_resume_goes_on_headless_instead_of_opening_the_tui(
    tmp_path: Path,
) -> None:
    out = tmp_path / "runs"
    first = subprocess.run(kan_tui(*RUN, "--epochs", "1", "--out", str(out)), capture_output=True)
    assert first.returncode == 0, first.stderr.decode()
    (run_dir,) = out.iterdir()
    done = subprocess.run(
        kan_tui("resume", str(run_dir), "--epochs", "2"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "not a terminal: resuming headless" in done.stderr.decode()
    assert b"\x1b[" not in done.stdout
    assert only_summary(out)["epochs_run"] == 2

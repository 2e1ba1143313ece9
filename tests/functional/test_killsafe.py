"""kill -9 at random moments of a real headless run: the run folder stays usable (issue 6).

One run of `kan-tui run --headless` on `digits` is killed with SIGKILL, resumed with `kan-tui
resume`, killed again, and so on; then a last resume finishes it. A kill moment is chosen from the
run's own progress (its printed lines: the run start, then epoch ends), plus a random delay of up
to one and a half epochs, so kills land in steps, evaluations and checkpoint writes. After every
kill the folder must hold what `resume` needs: checkpoints that load with `weights_only=True` (the
previous or the new one, never a truncated one), a metrics log that parses but for a possibly
partial last line and holds epochs 1..k once each, at most one of them after last.pt, and
parseable config and summary files. The seed is printed; `KILLSAFE_SEED` replays it.

Each session is a process of its own, forked by `killsafe_forkserver.py` and running `kan_tui` as
`python -m kan_tui` does: the kill is real, and the seconds of importing torch are paid once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kan_engine import presets_io, runs

KILLS = 8
# a killed session runs at most 2 epochs plus the delay (1.5 epochs): 40 leave each kill a live run
EPOCHS = 40
WAIT = 120  # seconds: a safety net for a hung process, never a synchronisation delay
RUN = ["run", "--headless", "--dataset", "digits", "--model", "kan", "--epochs", str(EPOCHS),
       "--batch-size", "128", "--warmup-epochs", "0", "--device", "cpu", "--seed", "3",
       "--patience", "0", "--out", "out"]  # fmt: skip


class ForkServer:
    """Drives killsafe_forkserver.py: one `kan_tui` child at a time, its output line by line."""

    def __init__(self, cwd: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KAN_TUI_CONFIG": str(cwd / "config")}
        self.stderr = cwd / "stderr.txt"
        with open(self.stderr, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("killsafe_forkserver.py"))],
                cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                text=True, start_new_session=True,
            )  # fmt: skip
        # a safety net for a hung child, never a synchronisation delay: ends the session
        self.watchdog = threading.Timer(WAIT, os.killpg, (self.proc.pid, signal.SIGKILL))
        self.watchdog.start()
        self.intervals: list[float] = []  # seconds between consecutive epoch lines

    def close(self) -> None:
        self.watchdog.cancel()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(WAIT)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the fork server ended: {self.stderr.read_text()[-2000:]}"
        return line

    def launch(self, args: list[str]) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        return int(self._line().removeprefix("pid "))

    def wait_for_lines(self, epochs: int) -> int | None:
        """Read the child's output until its start line and then `epochs` epoch lines (None);
        its exit code if it ended first. The reporter flushes every line (plain lines: a pipe)."""
        started, seen, previous = False, 0, None
        while not (started and seen >= epochs):
            line = self._line()
            if line.startswith("exit "):
                return int(line.removeprefix("exit "))
            started = started or line.startswith("run ")
            if line.startswith("epoch "):
                seen += 1
                now = time.perf_counter()
                if previous is not None:
                    self.intervals.append(now - previous)
                previous = now
        return None

    def epoch_seconds(self) -> float:
        """How long an epoch takes on this machine (a guess until two epoch lines were seen)."""
        return statistics.median(self.intervals) if self.intervals else 0.2

    def exit_code(self) -> int:
        while not (line := self._line()).startswith("exit "):
            pass
        return int(line.removeprefix("exit "))


def check_usable(run_dir: Path, note: str) -> int:
    """What a kill may leave: returns the number of epoch rows."""
    presets_io.read_file(run_dir / runs.CONFIG)
    if (run_dir / runs.SUMMARY).exists():
        json.loads((run_dir / runs.SUMMARY).read_text())
    text = (run_dir / runs.METRICS).read_text() if (run_dir / runs.METRICS).exists() else ""
    lines = text.splitlines()
    records = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            assert not text.endswith("\n"), f"{note}: a whole last line that is not JSON"
    rows = [r["epoch"] for r in records if r["event"] == "epoch"]
    assert rows == list(range(1, len(rows) + 1)), f"{note}: epoch rows {rows}"
    states: dict[str, dict[str, Any]] = {}
    for which in ("last", "best"):
        path = runs.checkpoint_path(run_dir, which)
        if path.exists():
            states[which] = torch.load(path, weights_only=True)
            assert states[which]["format"] == 1, f"{note}: {path}"
    if "last" in states:
        done = states["last"]["counters"]["epochs_run"]
        assert done in (len(rows), len(rows) - 1), f"{note}: last.pt {done}, rows {rows}"
    else:
        assert len(rows) <= 1, f"{note}: rows {rows} but no last.pt"
    return len(rows)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_records_every_epoch_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("KILLSAFE_SEED", random.randrange(2**32)))
    print(f"KILLSAFE_SEED={seed}")
    rng = random.Random(seed)
    server = ForkServer(tmp_path)
    args, killed = RUN, []
    try:
        for kill in range(KILLS):
            pid = server.launch(args)
            epochs, share = rng.randint(0, 2), rng.uniform(0, 1.5)
            ended = server.wait_for_lines(epochs)
            delay = share * server.epoch_seconds()
            assert ended is None, f"seed {seed}: session {kill + 1} ended ({ended}): {killed}"
            time.sleep(delay)  # the kill moment itself: the random variable under test
            os.kill(pid, signal.SIGKILL)
            assert server.exit_code() == -signal.SIGKILL
            run_dir = next((tmp_path / "out").iterdir())
            rows = check_usable(run_dir, f"seed {seed}, kill {kill + 1}")
            killed.append((epochs, round(delay, 3), rows))
            args = ["resume", str(run_dir), "--headless"]
        print(f"kills (epoch lines waited for, delay s, epoch rows left): {killed}")
        server.launch(args)
        code = server.exit_code()
    finally:
        server.close()
    assert code == 0, f"seed {seed}: {server.stderr.read_text()[-2000:]}"
    assert check_usable(run_dir, f"seed {seed}, finished") == EPOCHS
    assert runs.read_summary(run_dir)["status"] == "finished"
    assert [p.name for p in run_dir.rglob(".*")] == []  # no temporary files left behind

"""Hostile input, full disks and divergence through the real `kan-tui` CLI (issue 6).

A full disk is the kernel's own answer where possible: the atomic writer's temporary file is
swapped for a descriptor on /dev/full, so `write` fails with ENOSPC exactly as on a full disk.
The metrics log is appended in place, so there a patched `os.write` takes half a line and then
fails. Every case checks that what was written before is intact and that `resume` finishes the run
with every epoch recorded once. Runs train the `kan` baseline on `digits` (scikit-learn) on the CPU.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import error_line
from typer.testing import CliRunner, Result

from kan_engine import checkpoint, presets_io, recovery, resume_plan, runs
from kan_engine.config import to_data
from kan_engine.errors import RunDirError
from kan_tui.cli import app

CLI_TINY = ["--dataset", "digits", "--model", "kan", "--batch-size", "128", "--warmup-epochs", "0",
            "--device", "cpu", "--seed", "1", "--patience", "0", "--out", "out"]  # fmt: skip
ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def the_run(isolated: Path) -> Path:
    (run_dir,) = (isolated / "out").iterdir()
    return run_dir


def epoch_rows(run_dir: Path) -> list[int]:
    """Epoch numbers in metrics.jsonl; every line must be whole JSON (no partial last line)."""
    lines = (run_dir / runs.METRICS).read_text().splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if r["event"] == "epoch"]


def leftovers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*") if p.is_file()]


def last_checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


# --- full disks ----------------------------------------------------------------------------------


@contextlib.contextmanager
def full_disk_for(name: str, *, after: int) -> Iterator[None]:
    """Atomic writes of the file `name` fail with ENOSPC from the kernel after `after` of them."""
    real = tempfile.mkstemp
    seen = 0

    def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        nonlocal seen
        fd, path = real(*args, **kwargs)
        if kwargs.get("prefix") == f".{name}.":
            seen += 1
            if seen > after:
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", mkstemp)
        yield


def _path_of(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return ""


@contextlib.contextmanager
def full_disk_at_epoch_row(epoch: int) -> Iterator[None]:
    """metrics.jsonl: the disk takes half of the row of `epoch`, then every write fails."""
    real = os.write
    full = False

    def write(fd: int, data: Any) -> int:
        nonlocal full
        if not _path_of(fd).endswith(runs.METRICS):
            return real(fd, data)
        if full:
            raise OSError(errno.ENOSPC, ENOSPC)
        record = json.loads(bytes(data))
        if record["event"] == "epoch" and record["epoch"] == epoch:
            full = True
            return real(fd, bytes(data)[: len(data) // 2])
        return real(fd, data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "write", write)
        yield


# case -> (the full disk, error fragment, epoch rows and last.pt's epochs_run after the failure,
#          summary status after the failure)
FULL_DISKS: dict[str, tuple[Callable[[], Any], str, list[int], int, str]] = {
    "checkpoint": (
        lambda: full_disk_for("last.pt", after=1),
        f"checkpoints/last.pt: cannot write checkpoint: {ENOSPC}; the previous checkpoint is",
        [1, 2],
        1,
        "failed",
    ),
    "summary": (
        lambda: full_disk_for("summary.json", after=1),  # the "running" one is written
        f"summary.json: cannot write: {ENOSPC}; what was written before is unchanged",
        [1, 2, 3],
        3,
        "running",
    ),
    "metrics": (
        lambda: full_disk_at_epoch_row(2),
        f"metrics.jsonl: cannot write: {ENOSPC}",
        [1],
        1,
        "failed",
    ),
}


@pytest.mark.skipif(not Path("/dev/full").exists() or not Path("/proc/self/fd").is_dir(),
                    reason="needs Linux /dev/full and /proc")  # fmt: skip
@pytest.mark.parametrize("case", sorted(FULL_DISKS))
def test_full_disk_fails_the_run_and_loses_nothing(case: str, isolated: Path) -> None:
    disk, fragment, rows, epochs_run, status = FULL_DISKS[case]
    with disk():
        result = cli("run", "--headless", *CLI_TINY, "--epochs", "3")
    line = error_line(result, 1, "error: training failed: ", fragment)
    assert "\n" not in line
    run_dir = the_run(isolated)
    assert epoch_rows(run_dir) == rows  # whole lines only: a half-written row was cut off
    assert last_checkpoint(run_dir)["counters"]["epochs_run"] == epochs_run
    assert runs.read_summary(run_dir)["status"] == status
    assert leftovers(run_dir) == []  # no temporary files

    resumed = cli("resume", str(run_dir), "--headless")  # the disk has room again
    assert resumed.exit_code == 0, resumed.output
    assert epoch_rows(run_dir) == [1, 2, 3]
    assert runs.read_summary(run_dir)["status"] == "finished"


# --- divergence ----------------------------------------------------------------------------------


def test_absurd_learning_rate_names_the_layer_and_diverges(isolated: Path) -> None:
    """SGD at lr 10 x100 on the KAN layers: non-finite within the first epoch. The policy: skip
    the step, restore the last good state with half the LR (twice), then end as `diverged`."""
    result = cli(
        "run", "--headless", *CLI_TINY, "--epochs", "5", "--optimizer", "sgd", "--lr", "10",
        "--set", "optim.lr_mult.kan=100", "--set", "optim.lr_mult.other=100",
        "--clip-grad-norm", "0", "--scheduler", "constant",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    named = re.findall(r"non-finite in (\S+) \((?:output|gradient)\)", result.stdout)
    assert named, result.stdout
    halved = [line for line in result.stdout.splitlines() if "learning rates halved" in line]
    assert len(halved) == recovery.MAX_RESTORES
    assert re.search(r"^status\s+diverged$", result.stdout, re.MULTILINE)

    run_dir = the_run(isolated)
    summary = runs.read_summary(run_dir)
    assert (summary["status"], summary["restores"]) == ("diverged", recovery.MAX_RESTORES)
    warnings = [r for r in runs.read_metrics(run_dir) if r["event"] == "grad_norm_warning"]
    assert warnings[-1]["action"].endswith("diverged")
    # what was saved is the last good state: finite weights only
    state = last_checkpoint(run_dir)["model"]
    assert f"{named[0]}.spline_weight" in state  # the first warning names a KAN layer
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# --- hostile presets -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["save", "delete", "show"])
def test_preset_names_never_reach_outside_their_folder(command: str, isolated: Path) -> None:
    """`../x` and absolute names aimed at existing files leave those files untouched."""
    presets = isolated / "config" / "presets"
    presets.mkdir(parents=True)
    sibling = isolated / "config" / "x.toml"
    victim = isolated / "victim.toml"
    for path in (sibling, victim):
        path.write_text('[optim]\nlr = "not a number"\n')
    for name in ("../x", str(victim.with_suffix(""))):
        result = cli("presets", command, name)
        if command == "show":  # a path: read as a file, never as a name inside the folder
            error_line(result, 2, f"{name}: file not found")
        else:
            error_line(result, 2, f"preset name {name!r} is invalid")
    for path in (sibling, victim):
        assert path.read_text() == '[optim]\nlr = "not a number"\n'
    assert list(presets.iterdir()) == []


@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unreadable_preset_file(how: str, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = isolated / "locked.toml"
    path.write_text("[optim]\nlr = 0.01\n")
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root reads any file: chmod 000 cannot lock it (the simulated case runs)")
        path.chmod(0)
    else:
        real = os.open  # presets are read through os.open (non-blocking, see kan_engine.untrusted)

        def os_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", os_open)
    for args in (
        ["run", "--print-config", "-p"],
        ["presets", "show"],
        ["presets", "save", "m", "--from"],
    ):
        error_line(cli(*args, str(path)), 2, f"{path}: cannot read: Permission denied")


def test_hand_edited_user_presets(isolated: Path) -> None:
    """A garbage file and a file shadowing a built-in, dropped into the user preset folder."""
    presets = isolated / "config" / "presets"
    presets.mkdir(parents=True)
    (presets / "garbage.toml").write_bytes(bytes(range(256)) * 8)
    (presets / "lite.toml").write_text("[optim]\nlr = 0.5\n")
    listing = cli("presets", "list")
    assert listing.exit_code == 0, listing.output
    rows = [line.split() for line in listing.stdout.splitlines()[1:] if line.strip()]
    assert ["garbage", "user", "(unreadable)"] in rows
    assert sum(row[0] == "lite" for row in rows) == 1  # the built-in only
    shown = cli("run", "--print-config", "-p", "lite")
    builtin_lr = presets_io.resolve("lite")[0].optim.lr
    assert shown.exit_code == 0 and f"lr = {builtin_lr}" in shown.stdout  # built-ins win
    error_line(cli("run", "--headless", "-p", "garbage"), 2, "garbage.toml", "not a text file")
    assert not (isolated / "runs").exists()  # nothing started


# --- hostile run folders -------------------------------------------------------------------------


class Exploit:
    """Unpickling this runs a shell command: a checkpoint that must never be loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run_folder(isolated: Path, tiny_config: Callable[..., Any]) -> Path:
    """A run folder as `kan-tui run` leaves it before the first checkpoint: config.toml only."""
    run_dir = runs.create_run_dir(isolated / "out", "tiny")
    runs.write_config(run_dir, tiny_config())
    return run_dir


def _torch_file(obj: Any) -> Callable[[Path], None]:
    return lambda path: torch.save(obj, path)


def _pickle_file(obj: Any) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(pickle.dumps(obj))


def _truncated(path: Path) -> None:
    torch.save({"format": 1, "model": {"w": torch.zeros(10_000)}}, path)
    path.write_bytes(path.read_bytes()[:5000])


# case -> (writes the checkpoint file, fragments of the one error line besides its path)
BAD_CHECKPOINTS: dict[str, tuple[Callable[..., Callable[[Path], None]], list[str]]] = {
    "pickled_object": (
        lambda marker: _torch_file({"format": 1, "model": Exploit(marker)}),
        ["refused", "GLOBAL posix.system", "weights_only=True", "nothing in it was run"],
    ),
    "raw_pickle": (
        lambda marker: _pickle_file({"format": 1, "model": Exploit(marker)}),
        ["refused", "weights_only=True"],
    ),
    "empty": (lambda marker: lambda p: p.write_bytes(b""), ["damaged"]),
    "truncated": (lambda marker: _truncated, ["damaged", "truncated or not a checkpoint"]),
    "garbage": (
        lambda marker: lambda p: p.write_bytes(bytes(range(256)) * 4),
        ["damaged", "truncated or not a checkpoint"],
    ),
    "not_a_dict": (lambda marker: _torch_file([1, 2]), ["unknown checkpoint format"]),
    "missing_keys": (
        lambda marker: _torch_file({"format": 1, "model": {}}),
        ["not a kan-tui checkpoint (missing optimizer, schedule"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_bad_checkpoints_are_refused(command: str, case: str, run_folder: Path) -> None:
    make, fragments = BAD_CHECKPOINTS[case]
    marker = run_folder.parent / "pwned"
    which = "last" if command == "resume" else "best"
    path = runs.checkpoint_path(run_folder, which)
    make(marker)(path)
    args = ["--headless"] if command == "resume" else []
    if command == "eval" and case == "missing_keys":
        fragments = ["not a kan-tui checkpoint (missing counters)"]
    error_line(cli(command, str(run_folder), *args), 2, f"error: {path}: ", *fragments)
    assert not marker.exists()  # nothing was executed


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_checkpoint_of_another_model_does_not_fit(command: str, run_folder: Path) -> None:
    """A last.pt / best.pt that loads, says it trained with config.toml's config, but whose
    weights do not fit config.toml's model."""
    state = {key: {} for key in resume_plan.RESUME_KEYS}
    state |= {"format": 1, "model": {"w": torch.ones(2)}, "preset": "x", "metrics_offset": 0}
    state |= {"epoch": 1, "step_in_epoch": 0, "counters": {"epochs_run": 0, "best_epoch": 0}}
    state["config"] = to_data(runs.read_config(run_folder))
    for which in ("last", "best"):
        torch.save(state, runs.checkpoint_path(run_folder, which))
    args = ["--headless", "--debug"] if command == "resume" else ["--checkpoint", "last"]
    result = cli(command, str(run_folder), *args)
    config = run_folder / runs.CONFIG
    if command == "resume":  # --debug: the traceback, then the same one error line
        assert result.exit_code == 2 and "Traceback" in result.stderr
        line = result.stderr.strip().splitlines()[-1]
    else:
        line = error_line(result, 2)
    assert line.startswith(f"error: {run_folder}/checkpoints/last.pt: does not fit {config}: ")
    assert "Missing key(s)" in line and "\n" not in line


def test_resume_after_a_kill_before_the_first_checkpoint_starts_over(run_folder: Path) -> None:
    """Killed in the first epoch: no last.pt, a partial metrics line, an abandoned temp file."""
    (run_folder / runs.METRICS).write_text('{"event": "run_started"}\n{"event": "st')
    abandoned = run_folder / "checkpoints" / ".last.pt.abcd1234.tmp"
    abandoned.write_bytes(b"half a checkpoint")
    result = cli("resume", str(run_folder), "--headless")
    assert result.exit_code == 0, result.output
    assert "not written yet (killed in the first epoch): starting over" in result.stdout
    assert epoch_rows(run_folder) == [1, 2]
    records = runs.read_metrics(run_folder)
    assert sum(r["event"] == "run_started" for r in records) == 1
    assert leftovers(run_folder) == []
    summary = runs.read_summary(run_folder)
    assert (summary["status"], summary["preset"]) == ("finished", "tiny")


def test_resume_without_last_pt_after_finished_epochs_is_refused(run_folder: Path) -> None:
    """Epoch rows beyond the first mean last.pt existed: starting over would lose them."""
    rows = [{"event": "epoch", "epoch": n} for n in (1, 2)]
    (run_folder / runs.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("resume", str(run_folder), "--headless")
    error_line(result, 2, f"{run_folder}/checkpoints/last.pt: checkpoint missing")
    assert epoch_rows(run_folder) == [1, 2]


@pytest.mark.parametrize("first", [0x2E, 0x58, 0x68, 0x71, 0x80, 0xFF])
def test_garbage_checkpoint_is_one_clear_error(first: int, tmp_path: Path) -> None:
    """Foreign bytes break torch's unpickler with many exception types; each is one RunDirError.
    (The first byte picks the pickle opcode: these reach IndexError, UnicodeDecodeError, KeyError
    and UnpicklingError inside torch.load.)"""
    path = tmp_path / "last.pt"
    path.write_bytes(bytes([first]) + bytes(range(256)) * 4)
    with pytest.raises(RunDirError, match=re.escape(str(path))) as caught:
        checkpoint.load(path)
    assert "\n" not in str(caught.value)


def test_metrics_log_cuts_a_failed_line_back(tmp_path: Path) -> None:
    """The unit under the metrics case: the failed line is gone, the offset unchanged."""
    path = tmp_path / runs.METRICS
    log = runs.MetricsLog(path)
    log.write({"event": "epoch", "epoch": 1, "loss": math.nan})
    offset = log.offset
    with full_disk_at_epoch_row(2), pytest.raises(runs.RunWriteError, match=ENOSPC):
        log.write({"event": "epoch", "epoch": 2})
    log.write({"event": "epoch", "epoch": 3})
    log.close()
    assert offset == len('{"event": "epoch", "epoch": 1, "loss": "nan"}\n')
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1, 3]


def test_presets_save_on_a_full_disk_is_one_line_and_changes_nothing(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("presets", "save", "mine", "--from", "lite").exit_code == 0
    saved = (isolated / "config" / "presets" / "mine.toml").read_bytes()

    def no_space(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("kan_engine.atomic.write_text", no_space)
    result = cli("presets", "save", "mine", "--from", "power", "--force")
    error_line(result, 2, "mine.toml: cannot write", "No space left on device")
    assert (isolated / "config" / "presets" / "mine.toml").read_bytes() == saved

"""Run folders that lie or are damaged, through the real `kan-tui` CLI (issue 15, class 5).

One real 2-epoch run is made once per module; each test damages its own copy. Every command that
reads a run folder (`resume`, `eval`, `inspect`, `runs list`, `runs export`) must answer a
truncated, binary, garbage or wrong-typed file with one clear line (or a skipped row, for the
listing) and leave the folder as it was; `resume` of a run that is over says so and writes
nothing; `resume --epochs N` extends a run; and one folder is trained by one process at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import copy_of, error_line, module_home
from typer.testing import CliRunner, Result

from kan_engine import optim, presets_io, run_lock, runs
from kan_engine.config import apply_overrides, to_data
from kan_tui.cli import app

BASE_RUN = ["--dataset", "digits", "--model", "kan", "--device", "cpu", "--epochs", "2"]


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the folder by relative path: what "nothing changed" is checked against
    (the lock file aside: taking the lock writes the holder's pid, information only)."""
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != run_lock.LOCK
    }


def epoch_rows(run_dir: Path) -> list[int]:
    records = runs.read_metrics(run_dir)
    return [r["epoch"] for r in records if r["event"] == "epoch"]


def last_pt(run_dir: Path) -> Path:
    return runs.checkpoint_path(run_dir, "last")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_home(tmp_path_factory, "hostile") as home:
        yield home


@pytest.fixture(scope="module")
def base_run(env: Path) -> Path:
    """The real run: `kan-tui run --headless` of the kan baseline on digits, 2 epochs."""
    result = cli("run", "--headless", *BASE_RUN, "--out", env / "base")
    assert result.exit_code == 0, result.output
    (run_dir,) = (env / "base").iterdir()
    assert epoch_rows(run_dir) == [1, 2]
    assert runs.read_summary(run_dir)["status"] == "finished"
    return run_dir


@pytest.fixture
def run_dir(base_run: Path, tmp_path: Path) -> Path:
    return copy_of(base_run, tmp_path)


# --- config.toml ---------------------------------------------------------------------------------


def cut_before(path: Path, prefix: str) -> None:
    """Cut a file at the line end before the first line starting with `prefix`: valid TOML."""
    lines = path.read_text().splitlines(keepends=True)
    cut = next(n for n, line in enumerate(lines) if line.startswith(prefix))
    path.write_text("".join(lines[:cut]))


def test_truncated_config_toml_is_refused_then_restored_from_the_checkpoint(run_dir: Path) -> None:
    """Cut before `epochs =`: valid TOML whose defaults (50 epochs, ...) would train a different
    run. last.pt holds the config the run trained with: resume and eval refuse, naming the key."""
    config = run_dir / runs.CONFIG
    original = config.read_bytes()
    cut_before(config, "epochs = ")
    presets_io.read_file(config)  # still a valid preset: only the checkpoint can tell
    before = snapshot(run_dir)

    line = error_line(cli("resume", run_dir, "--headless"), 2, f"error: {config}: train.epochs: 50")
    assert f"but {last_pt(run_dir)} says 2" in line and "(and " in line
    assert f"kan-tui resume {run_dir} --config-from-checkpoint" in line
    evaluated = cli("eval", run_dir)
    error_line(evaluated, 2, f"error: {config}: ", f"{runs.checkpoint_path(run_dir, 'best')} says")
    assert snapshot(run_dir) == before  # nothing was written

    restored = cli("resume", run_dir, "--config-from-checkpoint")
    assert restored.exit_code == 0, restored.output
    assert "finished (2 of 2 epochs trained)" in restored.stdout
    assert f"{runs.CONFIG} rewritten from" in restored.stdout
    assert config.read_bytes() == original  # rendered again from the checkpoint's config
    assert {k: v for k, v in snapshot(run_dir).items() if k != runs.CONFIG} == {
        k: v for k, v in before.items() if k != runs.CONFIG
    }
    assert cli("eval", run_dir).exit_code == 0


@pytest.mark.parametrize("damage", ["binary", "missing", "wrong_type"])
def test_unreadable_config_toml_names_the_file_and_the_way_out(damage: str, run_dir: Path) -> None:
    config = run_dir / runs.CONFIG
    fragment = {
        "binary": "not a text file (invalid UTF-8)",
        "missing": "config.toml missing",
        "wrong_type": "train.epochs: Input should be a valid integer",
    }[damage]
    if damage == "binary":
        config.write_bytes(b"\xff\xfe" + bytes(range(256)) * 4)
    elif damage == "missing":
        config.unlink()
    else:
        config.write_text(config.read_text().replace("epochs = 2 ", 'epochs = "two" ', 1))
    before = snapshot(run_dir)
    error_line(cli("resume", run_dir, "--headless"), 2, fragment, "--config-from-checkpoint")
    error_line(cli("eval", run_dir), 2, fragment)
    error_line(cli("runs", "export", run_dir, "--csv", "-"), 2, fragment)
    listed = cli("runs", "list", "--out", run_dir.parent)
    assert listed.exit_code == 0, listed.output
    assert f"skipped {run_dir}: " in listed.stdout and fragment in listed.stdout
    assert snapshot(run_dir) == before


# --- metrics.jsonl -------------------------------------------------------------------------------


# case -> (what replaces metrics.jsonl, the reason the line gives)
BAD_METRICS: dict[str, tuple[bytes, str]] = {
    "binary": (b"\xff\xfe\x00\x80" + bytes(range(256)) * 16, "metrics.jsonl:1: not UTF-8 text"),
    "not_an_object": (b'{"event": "run_started"}\n[1, 2]\n', "metrics.jsonl:2: not a JSON object"),
    "garbage_line": (b'{"event": "run_started"}\n{oops\n{"event": "x"}\n', ":2: not a JSON line"),
}


@pytest.mark.parametrize("case", sorted(BAD_METRICS))
def test_damaged_metrics_jsonl_is_one_line_everywhere(case: str, run_dir: Path) -> None:
    data, reason = BAD_METRICS[case]
    (run_dir / runs.METRICS).write_bytes(data)
    before = snapshot(run_dir)

    resumed = cli("resume", run_dir, "--headless", "--epochs", "3")  # past the finished check
    error_line(resumed, 2, reason, "move metrics.jsonl aside")
    error_line(cli("runs", "export", run_dir), 2, reason)
    error_line(cli("runs", "export", run_dir, "--csv", "-"), 2, reason)
    inspected = cli("inspect", run_dir)  # the checkpoint is fine: shown, with one warning
    assert inspected.exit_code == 0, inspected.output
    assert "Traceback" not in inspected.output
    warnings = [line for line in inspected.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and reason in warnings[0]
    assert "top 10 edges of kan.0" in inspected.stdout
    listed = cli("runs", "list", "--out", run_dir.parent)  # the listing reads summaries only
    assert listed.exit_code == 0 and run_dir.name in listed.stdout
    assert snapshot(run_dir) == before


# --- summary.json --------------------------------------------------------------------------------


BAD_SUMMARIES: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)) * 4, "summary.json: not readable JSON"),
    "cut": (b'{"status": "fini', "summary.json: not readable JSON"),
    "a_list": (b'["finished"]', "summary.json: not a JSON object"),
    "wrong_type": (b'{"status": 5, "model": "kan"}', "summary.json: status: not text"),
    "unknown_status": (b'{"status": "exploded"}', "summary.json: status: not a run status"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUMMARIES))
def test_garbage_summary_json_is_a_skipped_row(case: str, run_dir: Path, base_run: Path) -> None:
    data, reason = BAD_SUMMARIES[case]
    (run_dir / runs.SUMMARY).write_bytes(data)
    good = shutil.copytree(base_run, run_dir.parent / "20200101-000000-good")
    listed = cli("runs", "list", "--out", run_dir.parent)
    assert listed.exit_code == 0, listed.output
    assert "Traceback" not in listed.output
    skipped = [line for line in listed.stdout.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped {run_dir}: ")
    assert reason in skipped[0]
    assert any(good.name in line and "finished" in line for line in listed.stdout.splitlines())
    exported = cli("runs", "export", run_dir, "--csv", "-")  # the epoch rows are intact
    assert exported.exit_code == 0 and exported.stdout.count("\n") == 3  # header + 2 epochs


def test_resume_rewrites_a_garbage_summary_without_training(run_dir: Path) -> None:
    """Every epoch is in last.pt but summary.json does not say the run finished (a kill in the
    final test, a damaged file): resume trains nothing and writes the run's end again."""
    (run_dir / runs.SUMMARY).write_bytes(bytes(range(256)))
    checkpoints = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    result = cli("resume", run_dir, "--headless")
    assert result.exit_code == 0, result.output
    assert "does not say so: writing the run's end" in result.stdout
    summary = runs.read_summary(run_dir)
    assert (summary["status"], summary["epochs_run"]) == ("finished", 2)
    assert isinstance(summary["test_acc"], float)
    assert epoch_rows(run_dir) == [1, 2]  # nothing trained, no row twice
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == checkpoints


# --- checkpoints ---------------------------------------------------------------------------------


def test_truncated_last_pt_is_one_line(run_dir: Path) -> None:
    path = last_pt(run_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = snapshot(run_dir)
    fragments = (f"error: {path}: damaged", "truncated or not a checkpoint")
    error_line(cli("resume", run_dir, "--headless"), 2, *fragments)
    error_line(cli("eval", run_dir, "--checkpoint", "last"), 2, *fragments)
    error_line(cli("inspect", run_dir, "--checkpoint", "last"), 2, *fragments)
    listed = cli("runs", "list", "--out", run_dir.parent)  # listed: it reads no checkpoint
    assert listed.exit_code == 0 and "finished" in listed.stdout
    assert cli("eval", run_dir).exit_code == 0  # best.pt is fine
    assert snapshot(run_dir) == before


# case -> (change to last.pt's state, fragment of the error line)
WRONG_TYPES: dict[str, tuple[Any, str]] = {
    "counters": (lambda s: s | {"counters": "x"}, "not a kan-tui checkpoint (epoch, step_in_epoch"),
    "epoch": (lambda s: s | {"epoch": "3"}, "not a kan-tui checkpoint (epoch, step_in_epoch"),
    "offset": (lambda s: s | {"metrics_offset": -5}, "not a kan-tui checkpoint (preset, metrics"),
    "preset": (lambda s: s | {"preset": 7}, "not a kan-tui checkpoint (preset, metrics_offset)"),
    "config": (lambda s: s | {"config": 5}, "last.pt: config: not a config (a int)"),
    "config_value": (
        lambda s: s | {"config": {**s["config"], "train": {"epochs": "many"}}},
        "last.pt: config: train.epochs: Input should be a valid integer",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_TYPES))
def test_wrong_typed_last_pt_is_one_line(case: str, run_dir: Path) -> None:
    change, fragment = WRONG_TYPES[case]
    path = last_pt(run_dir)
    torch.save(change(torch.load(path, weights_only=True)), path)
    before = snapshot(run_dir)
    error_line(cli("resume", run_dir, "--headless", "--epochs", "3"), 2, f"error: {path}", fragment)
    assert snapshot(run_dir) == before


# --- runs that are over, and extending them ------------------------------------------------------


def test_resume_of_a_finished_run_says_so_and_writes_nothing(run_dir: Path) -> None:
    before = snapshot(run_dir)
    result = cli("resume", run_dir, "--headless")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"{run_dir}: finished (2 of 2 epochs trained): nothing to resume, nothing changed; "
        f"to train longer: kan-tui resume {run_dir} --epochs N (N > 2)"
    )
    assert "resuming" not in result.output
    assert snapshot(run_dir) == before


def test_resume_epochs_extends_a_finished_run(run_dir: Path) -> None:
    before = snapshot(run_dir)
    for too_few in ("1", "2"):
        error_line(cli("resume", run_dir, "--epochs", too_few), 2, "--epochs: ", "trained 2 epochs")
    assert snapshot(run_dir) == before

    result = cli("resume", run_dir, "--headless", "--epochs", "4")
    assert result.exit_code == 0, result.output
    change = "train.epochs 2 -> 4: from epoch 3 on, the LR follows the cosine schedule of 4"
    assert change in result.stdout
    assert epoch_rows(run_dir) == [1, 2, 3, 4]  # the extra epochs, each row once
    records = runs.read_metrics(run_dir)
    assert [r["event"] for r in records].count("finished") == 1  # the first end was cut off
    config = runs.read_config(run_dir)
    assert config.train.epochs == 4
    state = torch.load(last_pt(run_dir), weights_only=True)
    assert state["config"] == to_data(config) and state["counters"]["epochs_run"] == 4
    summary = runs.read_summary(run_dir)
    assert (summary["status"], summary["epochs_run"]) == ("finished", 4)

    # the documented LR choice: epochs 1-2 kept the 2-epoch schedule's LRs, epochs 3-4 have the
    # 4-epoch schedule's (the LR of an epoch row is that of its last step)
    spe = next(r for r in records if r["event"] == "run_started")["steps_per_epoch"]
    rows = [r for r in records if r["event"] == "epoch"]
    for row, epochs in zip(rows, (2, 2, 4, 4), strict=True):
        factor = optim.lr_factor(config.schedule, epochs, spe, row["epoch"] * spe - 1)
        assert row["lr"]["kan"] == pytest.approx(optim.group_lrs(config, factor)["kan"])
    assert rows[2]["lr"]["kan"] > rows[1]["lr"]["kan"]  # the warm restart

    again = cli("resume", run_dir)
    assert again.exit_code == 0 and "finished (4 of 4 epochs trained)" in again.stdout


def early_stopped(run_dir: Path) -> None:
    """Make the copy a run that early stopping ended: patience 1, best epoch 1 of 2 (in
    config.toml, in last.pt's config and counters, and in summary.json)."""
    config = apply_overrides(runs.read_config(run_dir), {"train.patience": 1}, "test")
    runs.write_config(run_dir, config)
    path = last_pt(run_dir)
    state = torch.load(path, weights_only=True)
    state["config"] = to_data(config)
    state["counters"]["best_epoch"] = 1
    torch.save(state, path)
    summary = runs.read_summary(run_dir) | {"status": "early_stopped", "best_epoch": 1}
    runs.write_summary(run_dir, summary)


def test_resume_epochs_extends_an_early_stopped_run(run_dir: Path) -> None:
    early_stopped(run_dir)
    before = snapshot(run_dir)
    plain = cli("resume", run_dir, "--headless")
    assert plain.exit_code == 0, plain.output
    assert "stopped early after epoch 2 (no better val_acc since epoch 1, patience 1)" in (
        plain.stdout
    )
    assert snapshot(run_dir) == before

    result = cli("resume", run_dir, "--headless", "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert "early stopping: patience 1 counts again from epoch 3" in result.stdout
    assert epoch_rows(run_dir) == [1, 2, 3]  # it trained instead of stopping at once
    assert torch.load(last_pt(run_dir), weights_only=True)["counters"]["patience_from"] == 2
    assert runs.read_summary(run_dir)["epochs_run"] == 3


# --- one process per run folder ------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_resume(run_dir: Path) -> None:
    before = snapshot(run_dir)
    with run_lock.RunLock(run_dir):
        result = cli("resume", run_dir, "--headless", "--epochs", "3")
    error_line(
        result,
        2,
        f"error: {run_dir}: another kan-tui process (pid {os.getpid()}) is training in this run",
    )
    assert snapshot(run_dir) == before  # not even config.toml got the new epochs
    with run_lock.RunLock(run_dir) as lock:  # released: free again
        assert lock.held


def test_a_running_run_holds_its_lock_and_a_kill_leaves_none(tmp_path: Path, env: Path) -> None:
    """A real `kan-tui run` in a subprocess: once it has printed its first epoch, a resume of its
    folder is refused; after kill -9 the lock is free (the kernel dropped it)."""
    command = [sys.executable, "-m", "kan_tui", "run", "--headless", *BASE_RUN[:-1], "30"]
    process = subprocess.Popen(
        [*command, "--out", "out"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = next(line for line in process.stdout if line.startswith("run out/"))
        folder = tmp_path / first.split()[1].rstrip(":")  # "run out/<folder>: kan (...) on ..."
        for line in process.stdout:  # waits for the event: the first epoch row
            if line.startswith("epoch 1/30"):
                break
        else:
            pytest.fail("the run ended before its first epoch")
        refused = cli("resume", folder, "--headless")
        error_line(refused, 2, f"{folder}: another kan-tui process (pid {process.pid}) is training")
    finally:
        process.kill()
        process.wait()
    with run_lock.RunLock(folder) as lock:  # no stale lock after kill -9
        assert lock.held
    assert json.loads((folder / runs.SUMMARY).read_text())["status"] == "running"

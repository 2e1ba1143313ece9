"""Shared fixtures: a tiny digits config, run folders under tmp, and an event recorder."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kan_engine.config import RunConfig, apply_overrides
from kan_engine.events import Event

torch.set_num_threads(1)  # the test machine's cores are shared
if not torch.cuda.is_available():
    # Triton's interpreter runs the fused B-spline kernels on CPU tensors (only where a test
    # asks for them: the layer picks them by default on CUDA only). Read when they are first
    # imported, so it must be set before any test runs.
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY: dict[str, Any] = {
    "model.name": "kan",
    "data.dataset": "digits",
    "train.epochs": 2,
    "train.batch_size": 64,
    "train.log_every": 5,
    "train.device": "cpu",
    "train.patience": 0,
    "schedule.warmup_epochs": 0.5,
    "kan.prob_update_grid": 0.2,
}


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    """`tiny_config(**{"train.epochs": 3})`: the kan baseline on digits, CPU, ~20 steps/epoch."""

    def make(**overrides: Any) -> RunConfig:
        return apply_overrides(RunConfig(), {**TINY, **overrides}, source="test")

    return make


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """User presets, caches and runs under a temporary folder (the working directory), never the
    user's real ones; only data sets passed explicitly are found."""
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("KAN_TUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KAN_TUI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


class Recorder:
    """An event sink that keeps every event and lets a test wait for one (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waits: list[tuple[Callable[[Event], bool], threading.Event]] = []
        self._lock = threading.Lock()
        self.hooks: list[Callable[[Event], None]] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
            waits = list(self._waits)
        for predicate, flag in waits:
            if predicate(event):
                flag.set()
        for hook in self.hooks:
            hook(event)

    def when(self, predicate: Callable[[Event], bool]) -> threading.Event:
        """A threading.Event set the first time an event matching `predicate` arrives."""
        flag = threading.Event()
        with self._lock:
            self._waits.append((predicate, flag))
            if any(predicate(e) for e in self.events):
                flag.set()
        return flag

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.event == name]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    """A CLI command run in-process ignores Ctrl-C once its run is saved (as the real process
    does while it shuts down): give the next test the handlers it started with."""
    import signal

    names = [name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    yield
    for name, handler in saved.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)


def error_line(result: Any, code: int, *fragments: str) -> str:
    """A CLI result (typer's CliRunner) that exits `code` with exactly one `error:` line on stderr
    holding every fragment, and no traceback; returns that line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]

"""Shared fixtures and helpers: a tiny digits config, run folders under tmp, an event recorder, and
the Pilot helpers of the TUI tests (waits are condition loops on app state, never sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import threading
import unicodedata
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from textual import events
from textual.geometry import Region
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Input

from kan_engine import memory
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.events import EpochEnd, Event, Finished, Notice, RunStarted, StepMetrics
from kan_engine.kan import KANLinear

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


# TINY for a regression: a [2, 3, 1] flat KAN on `write_function_csv`'s table, two grid stages
REGRESSION: dict[str, Any] = {
    **TINY,
    "model.name": "flat_kan",
    "model.width": [2, 3, 1],
    "data.dataset": "csv",
    "data.augment": False,
    "data.erase_prob": 0.0,
    "train.ema_decay": 0.0,
    "train.log_every": 2,
    "schedule.warmup_epochs": 0,
    "kan.grid_schedule": [3, 5],
    "kan.grid_stage_epochs": 1,
}


def write_function_csv(path: Path, rows: int = 300) -> Path:
    """A table whose target is the KAN paper's exp(sin(pi x1) + x2^2): continuous, so
    `data.task` auto reads it as a regression."""
    import numpy as np

    x = np.random.default_rng(0).uniform(-1, 1, (rows, 2))
    y = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
    path.write_text("x1,x2,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(x, y, strict=True)))
    return path


def regression_overrides(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """REGRESSION on a function table written into `tmp` (~1 s of CPU for two epochs)."""
    return {**REGRESSION, "data.data_dir": str(write_function_csv(tmp / "f.csv")), **overrides}


def regression_args(tmp: Path) -> list[str]:
    """REGRESSION as `kan-tui run` / `compare` options, on a function table written into
    `tmp` (the values as TOML, which JSON's numbers, lists, strings and booleans are)."""
    import json

    csv = write_function_csv(tmp / "f.csv")
    return [*(f"--set={key}={json.dumps(value)}" for key, value in REGRESSION.items()),
            "--data-dir", str(csv)]  # fmt: skip


@pytest.fixture
def regression_config(tmp_path: Path) -> Callable[..., RunConfig]:
    """`regression_config(**{"train.epochs": 3})`: `tiny_config` for a regression."""

    def make(**overrides: Any) -> RunConfig:
        return apply_overrides(RunConfig(), regression_overrides(tmp_path, **overrides), "test")

    return make


def _user_folders_in(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """User presets and caches under `home`, never the user's real ones; only data sets passed
    explicitly are found."""
    monkeypatch.setenv("KAN_TUI_CONFIG", str(home / "config"))
    monkeypatch.setenv("KAN_TUI_CACHE", str(home / "cache"))
    monkeypatch.delenv("KAN_TUI_DATA", raising=False)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """User presets, caches and runs under a temporary folder (the working directory)."""
    _user_folders_in(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A test's own copy of a module's real run folder, to damage."""
    target = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, target)
    return target


@contextlib.contextmanager
def module_home(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """`isolated`'s user folders in one temporary folder for a module's fixtures (a real run
    made once and shared by its tests)."""
    home = factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        _user_folders_in(home, patch)
        yield home


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


# --- the TUI tests' helpers ----------------------------------------------------------------------

SIZE = (80, 24)

# The setup screen's memory line, as a real estimate of the lite preset would fill it. The real
# one loads Fashion-MNIST and measures a step (seconds of CPU that every setup test would pay);
# test_app_extras checks the real estimate on digits.
FIXED_ESTIMATE = memory.MemoryEstimate(
    params=8_407_200,
    param_bytes=33_443_712,
    grad_bytes=33_443_712,
    optimizer_bytes=66_887_424,
    step_bytes=66_887_424,
    backward=((40_000_000.0, 600_000.0),),
    data_bytes=55_160_000,
)


def fix_memory_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "estimate", lambda config, notice=None: FIXED_ESTIMATE)


def sync(test: Callable[..., Coroutine[None, None, None]]) -> Callable[..., None]:
    """Run an async Pilot test without an async pytest plugin (none is a project dependency)."""

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


async def wait_until(pilot: Pilot, condition: Callable[[], bool], what: str) -> None:
    """Let the app run until `condition` holds (bounded, so a hang fails instead of blocking)."""
    for _ in range(3000):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def type_into(pilot: Pilot, key: str, text: str) -> None:
    """Replace a form field's text by typing, as a user would."""
    field = pilot.app.screen.query_one(f"#field-{key.replace('.', '-')} Input", Input)
    field.focus()
    field.value = ""
    await pilot.press(*text)
    await pilot.pause()


async def burst(pilot: Pilot, *keys: str) -> None:
    """Keys as a terminal delivers a paste or fast typing: all queued at once, none waiting for
    the previous one to be handled (`pilot.press` waits after each key, which hides races
    between keys), then run until the app is idle."""
    app = pilot.app
    for key in keys:
        character = key if len(key) == 1 else None
        # Textual names a punctuation key by its Unicode name: "." is full_stop
        punctuation = character is not None and not character.isalnum()
        name = unicodedata.name(key).lower().replace(" ", "_") if punctuation else key
        event = events.Key(name, character)
        event.set_sender(app)
        app.post_message(event)
    await pilot.pause()


def visible_text(widget: Widget) -> str:
    """What the widget shows on screen now, line by line (Textual's own render path)."""
    region = Region(0, 0, *widget.outer_size)  # borders and padding included
    return "\n".join(strip.text for strip in widget.render_lines(region))


def unwrapped(widget: Widget) -> str:
    """The visible text of a bordered widget as one string without borders or spaces, so that
    a path folded over two lines is found whole."""
    lines = visible_text(widget).splitlines()
    return "".join(line.strip("│╭╮╰╯─▏ ") for line in lines).replace(" ", "")


def regression_replay(epochs: int = 4, steps: int = 20, log_every: int = 4) -> list[Event]:
    """A plausible function fit for the dashboard: a [2, 1, 1] flat KAN on a 600-row table,
    the grid extended each epoch (3, 5, 10, 20), RMSE falling 4x an epoch; finished and tested.
    Made-up numbers, so a test or a snapshot sees only what the widgets do with them."""
    grids = (3, 5, 10, 20)
    run_dir = "runs/20250101-120000-lite-flat_kan"
    events: list[Event] = [
        RunStarted(
            run_dir=run_dir,
            config={"model": {"name": "flat_kan"}, "train": {"batch_size": 1000}},
            device="cpu",
            params={"cnn": 0, "kan": 21, "other": 0, "total": 21},
            dataset="csv",
            train_size=432,
            val_size=48,
            test_size=120,
            steps_per_epoch=steps,
            epochs=epochs,
            task="regression",
        )
    ]
    lr = {"cnn": 1.0, "kan": 3.0, "other": 1.5}
    for epoch in range(1, epochs + 1):
        if epoch > 1:
            events.append(Notice(f"grid extended to {grids[epoch - 1]} intervals (epoch {epoch})"))
        for step in range(log_every, steps + 1, log_every):
            g = (epoch - 1) * steps + step
            rmse = 0.3 / 4 ** (2 * g / steps) + 0.02 / 4 ** (g / steps - 1)
            loss = (rmse / 0.6) ** 2  # MSE of targets standardised by their std (0.6)
            events.append(StepMetrics(epoch, step, g, steps, loss, None, lr, 0.01, 700.0, rmse))
        val = 0.0184 / 4 ** (epoch - 1)
        metrics = {"train_rmse": rmse, "val_rmse": val, "val_mae": val / 2}
        metrics["val_r2"] = 1 - (val / 0.6) ** 2
        events.append(
            EpochEnd(
                epoch=epoch,
                train_loss=(metrics["train_rmse"] / 0.6) ** 2,
                train_acc=None,
                val_loss=(val / 0.6) ** 2,
                val_acc=None,
                lr=lr,
                grid_updates=2 * epoch,
                grad_norm_warnings=0,
                seconds=1.5,
                best_epoch=epoch,
                best_val_acc=None,
                samples_per_s=700.0,
                outside_grid={"kan.0": 0.0, "kan.1": 0.0},
                grid_updates_per_layer={"kan.0": epoch, "kan.1": epoch},
                task="regression",
                metrics=metrics,
                best_val_rmse=val,
                grid_size=grids[epoch - 1],
            )
        )
    test = 1.08 * val
    summary = {"status": "finished", "task": "regression", "best_epoch": epochs}
    summary |= {"best_val_acc": None, "test_acc": None, "best_val_rmse": val}
    summary |= {"test_rmse": test, "test_mae": test / 2, "test_r2": 1 - (test / 0.6) ** 2}
    events.append(Finished({**summary, "epochs_run": epochs, "run_dir": run_dir}))
    return events


def outputs_and_grads(
    layer: KANLinear, x: torch.Tensor, fast: bool = True
) -> tuple[torch.Tensor, ...]:
    """A layer's output and the gradients of x, base_weight and spline_weight under an
    uneven weighting of the outputs (every output matters differently), on `fast` or the
    reference path: what the layer tests compare between routes."""
    layer.fast = fast
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), x.grad, layer.base_weight.grad, layer.spline_weight.grad

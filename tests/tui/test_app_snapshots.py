"""Snapshots of every screen at 80x24 (the promise), the main two at 120x40 too.

The dashboard is fed a fixed, made-up event sequence instead of a live run, and its memory
reading is fixed; the run history reads run folders written here from fixed numbers; so the
picture only changes when the layout or the widgets do. The setup screen's
memory estimate is fixed too (the real one loads Fashion-MNIST and takes seconds). Regenerate with
`pytest tests/tui/test_app_snapshots.py --snapshot-update` and look at the SVGs before committing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import fix_memory_estimate, regression_replay, wait_until
from PIL import Image
from textual.pilot import Pilot
from textual.widgets import Static

from kan_engine import presets_io, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.events import (
    CheckpointWritten,
    EarlyStopped,
    EpochEnd,
    Event,
    GradNormWarning,
    GridUpdated,
    Notice,
    RunStarted,
    StepMetrics,
)
from kan_tui.app import create_app
from kan_tui.screens.dashboard import DashboardScreen
from kan_tui.screens.dialogs import ConfirmDialog, NameDialog
from kan_tui.screens.runs import RunsScreen
from kan_tui.widgets.charts import SeriesChart
from kan_tui.widgets.data_note import DataNote

SIZES = [(80, 24), (120, 40)]
STEPS_PER_EPOCH = 40
LOG_EVERY = 4


@pytest.fixture(autouse=True)
def no_user_presets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    fix_memory_estimate(monkeypatch)


def replay_events(epochs: int = 4) -> list[Event]:
    """A plausible run: falling loss, rising accuracy, warm-up then cosine, grid updates, two
    gradient-norm warnings (one non-finite), a checkpoint and an early-stop notice."""
    spe = STEPS_PER_EPOCH
    events: list[Event] = [
        RunStarted(
            run_dir="runs/20250101-120000-lite",
            config={"model": {"name": "rapid_kan_lite"}, "train": {"batch_size": 64}},
            device="cuda:0",
            params={"cnn": 120_000, "kan": 8_100_000, "other": 4_000, "total": 8_224_000},
            dataset="fashion-mnist",
            train_size=54_000,
            val_size=6_000,
            test_size=10_000,
            steps_per_epoch=spe,
            epochs=10,
        ),
        Notice("input range: 98.7 % of KAN inputs inside [-2, 2]"),
    ]
    grid = 0
    for epoch in range(1, epochs + 1):
        for step in range(1, spe + 1):
            g = (epoch - 1) * spe + step
            warm = min(1.0, g / spe)
            if g % 9 == 0:
                grid += 1
                layer = f"kan.{grid % 2}"
                events.append(GridUpdated(g, layer, (grid + 1) // 2, grid))
            if step % LOG_EVERY == 0:
                loss = 1.8 * math.exp(-g / 50) + 0.25 + 0.03 * math.sin(g)
                lr = {"cnn": 0.004 * warm, "kan": 0.012 * warm, "other": 0.006 * warm}
                grad = 0.6 + 0.25 * math.sin(g / 6)
                events.append(
                    StepMetrics(epoch, step, g, spe, loss, 1 - loss / 2.2, lr, grad, 2150.0)
                )
        val = 1.8 * math.exp(-epoch * spe / 50) + 0.3
        events.append(
            EpochEnd(
                epoch=epoch,
                train_loss=val - 0.05,
                train_acc=1 - val / 2.3,
                val_loss=val,
                val_acc=1 - val / 2.1,
                lr={"cnn": 0.004, "kan": 0.012, "other": 0.006},
                grid_updates=grid,
                grad_norm_warnings=min(epoch, 2),
                seconds=1.2,
                best_epoch=epoch,
                best_val_acc=1 - val / 2.1,
                samples_per_s=2150.0,
                outside_grid={"kan.0": 0.011, "kan.1": 0.004},
                grid_updates_per_layer={"kan.0": (grid + 1) // 2, "kan.1": grid // 2},
            )
        )
        if epoch == 1:
            events.append(GradNormWarning(spe, 4.1, 2.5, "spike", "clipped"))
        if epoch == 2:
            events.append(
                GradNormWarning(2 * spe, math.inf, 2.5, "non-finite", "skipped step", layer="kan.1")
            )
            events.append(
                CheckpointWritten("runs/20250101-120000-lite/checkpoints/last.pt", 2, "manual")
            )
    events.append(EarlyStopped(epochs, epochs - 1, 0.9, 3))
    return events


def show_dashboard(
    tab: str, replay: Callable[[], list[Event]] = replay_events
) -> Callable[[Pilot], object]:
    async def run_before(pilot: Pilot) -> None:
        screen = DashboardScreen(
            RunConfig(), "lite", Path("runs"), start=False, memory=lambda device: "1.25/2.00 GB"
        )
        await pilot.app.push_screen(screen)
        screen.feed(replay())
        screen.query_one("#charts").active = tab
        await pilot.pause()

    return run_before


async def wait_for_preview(pilot: Pilot) -> None:
    """The LR preview is drawn after a debounce and the memory estimate comes from a worker:
    wait for both rather than for a fixed time."""
    screen = pilot.app.screen
    chart = screen.query_one("#lr-preview", SeriesChart)
    line = screen.query_one("#memory-line", Static)
    for _ in range(500):
        if chart.points_drawn and "params" in str(line.content):
            break
        await pilot.pause(0.02)
    else:
        raise AssertionError("the LR preview or the memory estimate never appeared")
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_setup_screen(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(create_app(), terminal_size=size, run_before=wait_for_preview)


async def wait_for_data_note(pilot: Pilot) -> None:
    await wait_for_preview(pilot)
    note = pilot.app.screen.query_one(DataNote)
    await wait_until(pilot, lambda: note.has_class("-found"), "the look at the images folder")
    await pilot.pause()


def test_setup_screen_own_images(
    snap_compare: Callable[..., bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data note under the data folder: the class folders and images of a folder."""
    monkeypatch.chdir(tmp_path)  # the folder typed is relative, the same everywhere
    for name, count in {"cat": 4, "dog": 5, "fish": 3}.items():
        Path("pets", name).mkdir(parents=True)
        for k in range(count):
            Image.new("L", (6, 6), 20 * k).save(Path("pets", name, f"{k}.png"))
    lite, _ = presets_io.resolve("lite")
    config = apply_overrides(lite, {"data.dataset": "images", "data.data_dir": "pets"}, "test")
    app = create_app(config=config)
    assert snap_compare(app, terminal_size=(80, 24), run_before=wait_for_data_note)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = create_app()
    assert snap_compare(app, terminal_size=size, run_before=show_dashboard("tab-loss"))


def test_dashboard_lr_tab(snap_compare: Callable[..., bool]) -> None:
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=show_dashboard("tab-lr"))


def test_dashboard_regression(snap_compare: Callable[..., bool]) -> None:
    """A finished function fit on its RMSE tab (log scale): the stats say RMSE and R²."""
    run_before = show_dashboard("tab-acc", regression_replay)
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=run_before)


def write_run(out: Path, name: str, model: str, status: str, epochs: int, top: float) -> None:
    """A run folder from fixed numbers: config.toml, one metrics row per epoch, summary.json."""
    run_dir = out / name
    run_dir.mkdir(parents=True)
    config = apply_overrides(RunConfig(), {"model.name": model, "train.epochs": 10}, source="t")
    runs.write_config(run_dir, config)
    log = runs.MetricsLog(run_dir / runs.METRICS)
    for epoch in range(1, epochs + 1):
        val = top - 0.3 / epoch
        row = EpochEnd(
            epoch=epoch,
            train_loss=0.9 / epoch,
            train_acc=val + 0.02,
            val_loss=0.8 / epoch + 0.1,
            val_acc=val,
            lr={"cnn": 0.004, "kan": 0.012, "other": 0.006},
            grid_updates=3 * epoch,
            grad_norm_warnings=0,
            seconds=2.5,
            best_epoch=epoch,
            best_val_acc=val,
            samples_per_s=21_600.0,
        )
        log.write(row.to_record())
    log.close()
    summary = {"status": status, "preset": name.split("-", 2)[2], "model": model}
    summary |= {
        "dataset": "fashion-mnist",
        "epochs_run": epochs,
        "best_val_acc": top - 0.3 / epochs,
    }
    summary |= {"test_acc": None if status == "stopped" else top - 0.005, "seconds": 2.5 * epochs}
    runs.write_summary(run_dir, summary)


async def show_runs(pilot: Pilot) -> None:
    out = Path("runs-snapshot")
    write_run(out, "20250101-090000-lite", "rapid_kan_lite", "finished", 6, 0.93)
    write_run(out, "20250101-100000-standard", "rapid_kan", "early_stopped", 4, 0.95)
    write_run(out, "20250102-083000-lite-kan", "kan", "stopped", 2, 0.86)
    await pilot.app.push_screen(RunsScreen(out))
    await pilot.pause()


def test_runs_screen(snap_compare: Callable[..., bool], tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # the folder shown in the table is relative, the same everywhere
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=show_runs)


async def show_confirm(pilot: Pilot) -> None:
    await pilot.app.push_screen(ConfirmDialog("Training is running. Stop it and quit?"))
    await pilot.pause()


async def show_name(pilot: Pilot) -> None:
    await pilot.app.push_screen(NameDialog("Save the form as a user preset", lambda name: None))
    await pilot.press(*"my-lite")
    await pilot.pause()


@pytest.mark.parametrize("dialog", [show_confirm, show_name], ids=["confirm", "name"])
def test_dialogs(snap_compare: Callable[..., bool], dialog: Callable[[Pilot], object]) -> None:
    assert snap_compare(create_app(), terminal_size=(80, 24), run_before=dialog)

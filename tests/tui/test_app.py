"""The Textual app, driven through Textual's Pilot at 80x24 (the smallest size we promise).

Runs are real (digits, the small `kan` baseline, two epochs) so that the thread worker, the event
queue and the drain timer are exercised end to end; waits are condition loops on app state.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    SIZE,
    fix_memory_estimate,
    regression_replay,
    sync,
    type_into,
    unwrapped,
    visible_text,
    wait_until,
)
from textual.pilot import Pilot
from textual.widgets import Button, Input, Select, Static, TabbedContent

from kan_engine import presets_io, resume_plan, trainer
from kan_engine.config import RunConfig
from kan_engine.events import EarlyStopped, EpochEnd, GradNormWarning, RunStarted, StepMetrics
from kan_tui.app import create_app
from kan_tui.formatting import sig
from kan_tui.run_model import RunState
from kan_tui.screens.dashboard import DashboardScreen
from kan_tui.screens.dialogs import ConfirmDialog, NameDialog
from kan_tui.screens.setup import SetupScreen
from kan_tui.widgets.charts import SeriesChart, thin
from kan_tui.widgets.form import FIELDS, ConfigForm, lookup, parse_field, validate_form
from kan_tui.widgets.presets import PresetList
from kan_tui.widgets.stats import stats_rows
from kan_tui.widgets.warnings import NoticeLog, WarningsList

LITE_LR = presets_io.resolve("lite")[0].optim.lr  # what the form shows for lite


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """User presets in a temporary folder, never the user's own; a fixed memory estimate."""
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    fix_memory_estimate(monkeypatch)


async def training_dashboard(pilot: Pilot) -> DashboardScreen:
    """The dashboard, once its run has taken a step."""
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen), "dashboard")
    dash = pilot.app.screen
    assert isinstance(dash, DashboardScreen)
    await wait_until(pilot, lambda: dash.state.global_step > 0, "training to start")
    return dash


def field_reason(app: object, key: str) -> str:
    screen = app.screen  # type: ignore[attr-defined]
    return str(screen.query_one(f"#field-{key.replace('.', '-')} .field-reason", Static).content)


# --- form validation (no UI) ------------------------------------------------------------------


def test_a_warmup_longer_than_a_short_run_is_accepted() -> None:
    config, errors = validate_form(RunConfig(), {"train.epochs": 3, "schedule.warmup_epochs": 5})
    assert errors == {}
    assert config is not None and config.train.epochs == 3


def test_every_bad_field_gets_its_own_reason() -> None:
    _, errors = validate_form(RunConfig(), {"optim.lr": -1, "train.batch_size": 2.5})
    assert set(errors) == {"optim.lr", "train.batch_size"}
    assert "greater than 0" in errors["optim.lr"]


def test_unknown_model_is_refused_with_the_registry() -> None:
    _, errors = validate_form(RunConfig(), {"model.name": "nope"})
    assert "unknown model 'nope'" in errors["model.name"]


# --- run state (no UI) ------------------------------------------------------------------------


def test_run_state_folds_events_and_drops_non_finite_points() -> None:
    state = RunState()
    state.apply(
        RunStarted(
            "r",
            {"model": {"name": "kan"}, "train": {"batch_size": 10}},
            "cpu",
            {"total": 5},
            "digits",
            100,
            10,
            10,
            10,
            2,
        )
    )
    for step, loss in ((5, 1.0), (10, math.nan)):
        state.apply(StepMetrics(1, step, step, 10, loss, 0.5, {"kan": 0.1}, 0.3, 100.0))
    state.apply(GradNormWarning(10, math.inf, 2.0, "non-finite", "skipped step", "kan.0"))
    state.apply(EpochEnd(1, 0.9, 0.6, 0.8, 0.7, {"kan": 0.1}, 4, 1, 1.0, 1, 0.7, 100.0))
    assert state.train_loss == [(0.5, 1.0)]  # the NaN step is not plotted
    assert state.val_score_curve == [(1.0, 0.7)]
    assert (state.grid_total, state.best_epoch, state.warnings_seen) == (4, 1, 1)
    assert any("non-finite" in text for _, text in state.notices)
    assert state.eta_seconds() == pytest.approx(10 * 10 / 100.0)  # one epoch of 10 steps left


def test_run_state_folds_a_regression_into_rmse_scores() -> None:
    state = RunState()
    events = regression_replay()
    for event in events:
        state.apply(event)
    steps = [e for e in events if isinstance(e, StepMetrics)]
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    summary = events[-1].summary  # type: ignore[attr-defined]
    assert (state.task, state.metric, state.status) == ("regression", "rmse", "finished")
    assert state.last_score == steps[-1].rmse and len(state.train_score) == len(steps)
    assert state.val_score_curve == [(e.epoch, e.metrics["val_rmse"]) for e in epochs]
    assert (state.best_val_score, state.best_epoch) == (summary["best_val_rmse"], 4)
    assert state.test_score == summary["test_rmse"] and state.grid_size == 20
    assert state.metrics["val_r2"] == epochs[-1].metrics["val_r2"]
    assert state.metrics["test_mae"] == summary["test_mae"]
    state.apply(EarlyStopped(4, 3, None, 2, best_val_rmse=0.0123))
    assert state.notices[-1][1].endswith("no better val rmse for 2 epochs (best 0.0123 at epoch 3)")


def test_the_position_follows_the_trainers_step_counter_between_step_events() -> None:
    state = RunState()
    state.apply(RunStarted("r", {"train": {"batch_size": 10}}, "cpu", {"total": 5}, "digits",
                           100, 10, 10, 21, 6))  # fmt: skip
    state.apply(StepMetrics(1, 20, 20, 21, 1.0, 0.5, {"kan": 0.1}, 0.3, 100.0))
    state.follow(21)
    assert (state.epoch, state.step) == (1, 21)
    state.follow(30)  # epoch 2, before its first step event (log_every 20)
    assert (state.epoch, state.step, state.global_step) == (2, 9, 30)
    state.apply(EpochEnd(1, 0.9, 0.6, 0.8, 0.7, {"kan": 0.1}, 4, 1, 1.0, 1, 0.7, 100.0))
    assert (state.epoch, state.step) == (2, 9)  # a late epoch row does not move it back
    state.apply(StepMetrics(2, 19, 40, 21, 1.0, 0.5, {"kan": 0.1}, 0.3, 100.0))
    state.follow(35)  # behind the step events: ignored
    assert (state.epoch, state.step, state.global_step) == (2, 19, 40)


def test_path_and_column_fields_are_text_as_typed_and_empty_is_unset() -> None:
    assert parse_field("data.data_dir", " /data/my table.csv ", None) == "/data/my table.csv"
    assert parse_field("data.target", "2", None) == "2"  # a column named 2, not the number
    assert parse_field("data.data_dir", "  ", None) is None
    assert parse_field("train.epochs", "2", None) == 2
    config, errors = validate_form(RunConfig(), {"data.dataset": "csv", "data.target": "true"})
    assert not errors and config is not None and config.data.target == "true"
    assert lookup({"data": {}}, "data.data_dir") is None


def test_thin_keeps_the_newest_point() -> None:
    points = [(float(i), float(i)) for i in range(1000)]
    kept = thin(points, 100)
    assert len(kept) == 100 and kept[-1] == points[-1] and kept[0] == points[0]


# --- setup screen -----------------------------------------------------------------------------


@sync
async def test_invalid_lr_blocks_start_and_shows_the_reason(tmp_path: Path) -> None:
    app = create_app(out_dir=tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        await type_into(pilot, "optim.lr", "-1")
        assert "greater than 0" in field_reason(app, "optim.lr")
        assert app.screen.query_one("#start", Button).disabled
        app.screen.query_one(PresetList).focus()
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, SetupScreen)
        assert "cannot start" in str(app.screen.query_one("#form-status", Static).content)
        await type_into(pilot, "optim.lr", "0.002")
        assert field_reason(app, "optim.lr") == ""
        assert not app.screen.query_one("#start", Button).disabled
        assert app.screen.query_one("#field-optim-lr").has_class("-changed")
    assert not (tmp_path / "runs").exists()


@sync
async def test_save_list_load_round_trip_of_a_user_preset() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        setup = app.screen
        await type_into(pilot, "optim.lr", "0.002")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, NameDialog), "name dialog")
        await pilot.press(*"lite", "enter")  # a built-in name is refused with presets_io's reason
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)
        assert "built-in" in str(app.screen.query_one("#name-error", Static).content)
        app.screen.query_one(Input).value = ""
        await pilot.press(*"mine", "enter")
        await wait_until(pilot, lambda: app.screen is setup, "back on setup")
        presets = setup.query_one(PresetList)
        assert "mine" in presets.presets and not presets.presets["mine"].builtin
        assert presets_io.resolve("mine")[0].optim.lr == 0.002  # what `presets show` prints

        presets.focus()
        presets.highlighted = presets.get_option_index("lite")
        await pilot.press("enter")
        await wait_until(pilot, lambda: setup.preset_name == "lite", "lite loaded")
        await pilot.pause()
        assert setup.query_one(ConfigForm).values()["optim.lr"] == LITE_LR

        presets.highlighted = presets.get_option_index("mine")
        await pilot.press("enter")
        await wait_until(pilot, lambda: setup.preset_name == "mine", "mine loaded")
        await pilot.pause()
        assert setup.query_one(ConfigForm).values()["optim.lr"] == 0.002
        assert not setup.query(".field.-changed")  # loaded preset is the new reference

        await type_into(pilot, "train.seed", "7")  # saving over a user preset asks first
        await pilot.press("ctrl+s", *"mine", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "overwrite?")
        await pilot.press("y")
        await wait_until(pilot, lambda: app.screen is setup, "back on setup")
        assert presets_io.resolve("mine")[0].train.seed == 7

        presets.focus()
        presets.highlighted = presets.get_option_index("mine")
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "delete?")
        await pilot.press("y")
        await wait_until(pilot, lambda: "mine" not in presets.presets, "preset deleted")
    assert not (presets_io.user_dir() / "mine.toml").exists()


# --- runs -------------------------------------------------------------------------------------


def run_summary(out_dir: Path) -> dict[str, object]:
    (run_dir,) = out_dir.iterdir()
    return json.loads((run_dir / "summary.json").read_text())


@sync
async def test_a_digits_run_driven_from_the_setup_screen(tmp_path: Path) -> None:
    app = create_app(out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        setup = app.screen
        for key, value in (("model-name", "kan"), ("data-dataset", "digits")):
            setup.query_one(f"#field-{key} Select", Select).value = value
        await type_into(pilot, "train.epochs", "2")
        await type_into(pilot, "schedule.warmup_epochs", "1")
        await pilot.press("r")  # in a field: text, not a start
        field = setup.query_one("#field-schedule-warmup_epochs Input", Input)
        assert field.value == "1r" and isinstance(app.screen, SetupScreen)
        await pilot.press("backspace", "escape")  # escape leaves the field...
        assert not isinstance(setup.focused, Input)
        field.focus()
        await pilot.press("ctrl+r")  # ...and ctrl+r starts from anywhere
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "dashboard")
        dash = app.screen
        await wait_until(pilot, lambda: dash.state.done, "the run to end")
        await pilot.pause()
        assert dash.state.status == "finished", dash.state.error
        assert dash.state.grid_total > 0 and sum(dash.state.grid_per_layer.values()) > 0
        assert dash.state.test_score is not None
        for chart in ("#chart-loss", "#chart-acc", "#chart-lr"):
            assert dash.query_one(chart, SeriesChart).points_drawn > 0, chart
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is setup, "back to setup")
    assert run_summary(tmp_path)["status"] == "finished"


@sync
async def test_a_run_of_another_model_is_labelled_by_it_and_the_setup_after_it_loads_the_preset(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    """`kan-tui run --preset lite --model kan` opens here: the folder says lite-kan, and `n`
    brings the setup screen with the lite preset (it once tried to load a preset 'lite-kan')."""
    config = tiny_config(**{"train.epochs": 1})  # the kan baseline: not lite's model
    app = create_app(config=config, preset_name="lite", start=True, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        dash = await training_dashboard(pilot)
        await wait_until(pilot, lambda: dash.state.done, "the run to end")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup")
        setup = app.screen
        await pilot.pause()
        assert not setup.query_one("#preset-error").display  # no "cannot load preset" panel
        assert setup.query_one(PresetList).highlighted_name == "lite"
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith("-lite-kan")
    assert 'description = "lite preset, model kan"' in (run_dir / "config.toml").read_text()


@sync
async def test_quit_during_a_run_stops_it_with_a_checkpoint(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    config = tiny_config(**{"train.epochs": 200})
    app = create_app(config=config, preset_name="lite", start=True, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        dash = await training_dashboard(pilot)
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "quit?")
        await pilot.press("y")
        await wait_until(pilot, dash.run.done.is_set, "the training thread to end")
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert run_summary(tmp_path)["status"] == "stopped"
    assert app.return_code == 0
    assert app.stopped_run is not None and Path(app.stopped_run[0]) == run_dir


def test_after_a_quit_mid_run_the_shell_is_told_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `open_tui` prints once the app has handed the terminal back (the app itself, as the
    test above drives it, records the stopped run)."""
    import kan_tui.app
    from kan_tui.cli.base import open_tui

    class Quitted:
        return_code = 0
        stopped_run = ("runs/20250101-120000-lite x", 3)

        def run(self, mouse: bool) -> None:
            pass

    monkeypatch.setattr(kan_tui.app, "create_app", lambda **options: Quitted())
    assert open_tui(mouse=False) == 0
    err = capsys.readouterr().err
    assert err == (
        "stopped runs/20250101-120000-lite x at epoch 3 (last.pt written); continue it with: "
        "kan-tui resume 'runs/20250101-120000-lite x'\n"
    )


@sync
async def test_the_tui_resumes_a_stopped_run_in_its_folder(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    """`kan-tui resume RUN` on a terminal: the dashboard continues the run where it stopped."""
    first: trainer.Trainer

    def stop_after_epoch_1(event: object) -> None:
        if isinstance(event, EpochEnd):
            first.stop()

    first = trainer.Trainer(
        tiny_config(**{"train.epochs": 3}), sink=stop_after_epoch_1, out_dir=tmp_path
    )
    assert first.run()["status"] == "stopped"
    plan = resume_plan.read(first.run_dir)
    app = create_app(resume=plan, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "dashboard")
        dash = app.screen
        await wait_until(pilot, lambda: dash.state.done, "the run to end")
        assert dash.state.status == "finished", dash.state.error
        assert dash.state.epoch == 3
    summary = run_summary(tmp_path)  # the same folder, and no other
    assert summary["status"] == "finished" and summary["epochs_run"] == 3
    epochs = [json.loads(line)["epoch"] for line in (first.run_dir / "metrics.jsonl").open()
              if '"event": "epoch"' in line]  # fmt: skip
    assert epochs == [1, 2, 3]


@sync
async def test_an_error_in_the_run_shows_a_panel_and_the_app_stays_usable(
    tmp_path: Path, tiny_config: Callable[..., RunConfig]
) -> None:
    config = tiny_config(**{"data.dataset": "csv"})  # no data_dir: fails before training
    app = create_app(config=config, preset_name="lite", start=True, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "dashboard")
        dash = app.screen
        await wait_until(pilot, lambda: dash.state.status == "failed", "the failure")
        panel = dash.query_one("#error-panel", Static)
        assert panel.display and "csv" in str(panel.content).lower()
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "back to setup")


@sync
async def test_a_log_scale_chart_can_be_rendered_twice() -> None:
    """plotext logs the figure's data in place on build: a second render (a resize, a tab
    switch) must not take the log of logs."""
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        dash = DashboardScreen(RunConfig(), "lite", Path("runs"), start=False)
        await app.push_screen(dash)
        chart = dash.query_one("#chart-loss", SeriesChart)
        chart.show({"train": [(0.5, 0.9), (1.0, 0.5), (1.5, 0.2)], "val": [(1.0, 0.6)]})
        first, second = str(chart.render()), str(chart.render())
        assert first == second and "train" in first


@pytest.fixture
def sighup_default() -> Iterator[None]:
    """SIGHUP as a terminal leaves it (not ignored, as under `nohup`), restored afterwards."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


@sync
async def test_sighup_stops_the_run_with_a_checkpoint_and_exits(
    tmp_path: Path, tiny_config: Callable[..., RunConfig], sighup_default: None
) -> None:
    """A dropped SSH connection: the terminal sends SIGHUP to the app's process."""
    config = tiny_config(**{"train.epochs": 200})
    app = create_app(config=config, preset_name="lite", start=True, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        dash = await training_dashboard(pilot)
        # without the app's handler the signal would end pytest itself
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(pilot, dash.run.done.is_set, "the training thread to end")
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert run_summary(tmp_path)["status"] == "stopped"
    assert app.return_code == 128 + signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # handed back on exit


FAIL_AFTER = 8  # training steps before the injected error: some steps are logged first


@sync
async def test_an_error_mid_run_shows_a_panel_marks_the_run_failed_and_the_app_stays_usable(
    tmp_path: Path, tiny_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    build_model = trainer.build_model

    def failing_model(*args: object) -> torch.nn.Module:
        """The real model, with a forward that raises on the FAIL_AFTER+1th training step."""
        model = build_model(*args)  # type: ignore[arg-type]
        steps = itertools.count(1)

        def hook(module: torch.nn.Module, inputs: object) -> None:
            if module.training and torch.is_grad_enabled() and next(steps) > FAIL_AFTER:
                raise RuntimeError("injected failure in the forward")

        model.register_forward_pre_hook(hook)
        return model

    monkeypatch.setattr(trainer, "build_model", failing_model)
    app = create_app(config=tiny_config(), preset_name="lite", start=True, out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "dashboard")
        dash = app.screen
        await wait_until(pilot, lambda: dash.state.status == "failed", "the failure")
        await wait_until(pilot, lambda: dash.worker is not None and dash.worker.is_finished, "")
        assert 0 < dash.state.global_step <= FAIL_AFTER  # it failed mid-run, after logged steps
        assert dash.query_one("#chart-loss", SeriesChart).points_drawn > 0
        panel = dash.query_one("#error-panel", Static)
        assert panel.display
        shown = lambda: "injected failure in the forward" in visible_text(panel)  # noqa: E731
        await wait_until(pilot, shown, "the error panel laid out and drawn")
        assert "failed" in visible_text(dash.query_one("#run-status", Static))
        await pilot.press("t")  # still answering keys
        assert dash.query_one("#charts").active == "tab-acc"
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "back to setup")
    assert run_summary(tmp_path)["status"] == "failed"


@sync
async def test_a_broken_user_preset_is_explained_inline_and_the_form_keeps_its_values() -> None:
    folder = presets_io.user_dir()
    folder.mkdir(parents=True)
    (folder / "typo.toml").write_text("[optim\nlr = 0.01\n")
    (folder / "badlr.toml").write_text('[optim]\nlr = "fast"\n')
    (folder / "garbage.toml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        setup = app.screen
        presets = setup.query_one(PresetList)
        panel = setup.query_one("#preset-error", Static)
        assert not panel.display
        for name, reason in (
            ("typo", "TOML syntax error"),
            ("badlr", "optim.lr: Input should be a valid number"),
            ("garbage", "not a text file"),
        ):
            presets.focus()
            presets.highlighted = presets.get_option_index(name)
            await pilot.press("enter")
            await wait_until(pilot, lambda: panel.display, f"the reason for {name}")
            shown = unwrapped(panel)
            assert str(folder / f"{name}.toml") in shown, visible_text(panel)
            assert reason.replace(" ", "") in shown, visible_text(panel)
            assert setup.preset_name == "lite"  # the form keeps the last good preset
            assert setup.query_one(ConfigForm).values()["optim.lr"] == LITE_LR
            assert not setup.query_one("#start", Button).disabled
        presets.highlighted = presets.get_option_index("lite")
        await pilot.press("enter")
        await wait_until(pilot, lambda: not panel.display, "the panel to go")
        assert isinstance(app.screen, SetupScreen)


@sync
async def test_a_non_finite_gradient_names_its_layer_on_the_dashboard() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        dash = DashboardScreen(RunConfig(), "lite", Path("runs"), start=False)
        await app.push_screen(dash)
        action = "skipped step; restored last good state, lr halved"
        dash.run.sink(GradNormWarning(80, math.nan, math.inf, "non-finite", action, "kan.1"))
        await wait_until(pilot, lambda: dash.state.warnings_seen == 1, "the drain timer")
        await pilot.pause()
        _, row = visible_text(dash.query_one(WarningsList)).splitlines()[:2]
        assert row.split()[:5] == ["80", "nan", "inf", "non-finite", "kan.1"]
        notices = unwrapped(dash.query_one(NoticeLog))
        assert "step80:non-finitegradientinkan.1:skippedstep" in notices


@sync
async def test_a_regression_dashboard_shows_rmse_r2_and_the_grid_stage() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        dash = DashboardScreen(RunConfig(), "lite", Path("runs"), start=False)
        await app.push_screen(dash)
        events = regression_replay()
        dash.feed(events[:-1])
        status = dash.query_one("#run-status", Static)
        assert "csv · grid 20" in str(status.content)  # the grid schedule's stage, while it runs
        dash.feed(events[-1:])
        await pilot.pause()
        epoch = [e for e in events if isinstance(e, EpochEnd)][-1]
        summary = events[-1].summary  # type: ignore[attr-defined]
        rows, fit = stats_rows(dash.state), epoch.metrics
        shown = visible_text(dash.query_one("#stats-table", Static))
        assert all(f"{label:<9} {value}" in shown for label, value in rows)  # none cut at 80x24
        values = dict(rows)
        assert values["train"].startswith("rmse ") and "acc" not in values["train"]
        assert values["val"] == f"rmse {sig(fit['val_rmse'])} r² {sig(fit['val_r2'])}"
        assert values["best val"] == f"{sig(summary['best_val_rmse'])} @ epoch 4"
        assert values["test"] == f"rmse {sig(summary['test_rmse'])} r² {sig(summary['test_r2'])}"
        tabs = dash.query_one(TabbedContent)
        assert str(tabs.get_tab("tab-acc").label) == "RMSE"
        chart = dash.query_one("#chart-acc", SeriesChart)
        assert chart.log_y and chart.points_drawn == len(dash.state.train_score) + 4
        assert f"csv · test rmse {sig(summary['test_rmse'])}" in str(status.content)
        assert "gridextendedto20intervals" in unwrapped(dash.query_one(NoticeLog))


@sync
async def test_tab_scrolls_form_fields_below_the_fold_into_view() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup screen")
        form = app.screen.query_one(ConfigForm)
        seed = form.query_one("#field-train-seed Input", Input)
        assert not form.region.contains_region(seed.region)  # below the fold at 80x24
        form.query_one("#field-train-patience Input", Input).focus()
        for _ in FIELDS:
            if app.focused is seed:
                break
            await pilot.press("tab")
        assert app.focused is seed
        await pilot.pause()
        assert form.scroll_y > 0 and form.region.contains_region(seed.region)

"""The TUI's run history, activation viewer, memory line and LR-finder action, through Pilot.

One short real run (digits, the kan baseline) provides the run folders, and one short regression
the history's fit rows; the screens read them as they would after any run. Waits are condition
loops on app state, never sleeps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import SIZE, TINY, regression_overrides, sync, wait_until
from textual.widgets import DataTable, Input, Static

from kan_engine import activations, history, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.events import EpochEnd
from kan_engine.trainer import Trainer
from kan_tui.app import create_app
from kan_tui.formatting import sig
from kan_tui.screens.activations import TOP_EDGES, ActivationsScreen, EdgePlot
from kan_tui.screens.dashboard import DashboardScreen
from kan_tui.screens.dialogs import ConfirmDialog
from kan_tui.screens.runs import RunsScreen
from kan_tui.screens.setup import SetupScreen
from kan_tui.widgets.charts import SeriesChart
from kan_tui.widgets.form import ConfigForm


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))


def tiny() -> RunConfig:
    return apply_overrides(RunConfig(), {**TINY, "train.epochs": 1}, source="test")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extras") / "runs"
    trainer = Trainer(tiny(), sink=lambda event: None, out_dir=out, preset_name="tiny")
    trainer.run()
    return trainer.run_dir


@pytest.fixture
def out_dir(real_run: Path, tmp_path: Path) -> Path:
    """Two copies of the real run, an hour apart."""
    out = tmp_path / "runs"
    shutil.copytree(real_run, out / "20250101-090000-tiny")
    shutil.copytree(real_run, out / "20250101-100000-tiny")
    return out


@sync
async def test_runs_screen_lists_plots_overlays_and_exports(out_dir: Path) -> None:
    app = create_app(out_dir=out_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen")
        screen = app.screen
        table = screen.query_one(DataTable)
        assert table.row_count == 2
        assert str(table.get_row_at(0)[1]) == "20250101-100000-tiny"  # newest first
        chart = screen.query_one("#runs-chart", SeriesChart)
        assert set(chart.series) == {"train", "val"} and chart.points_drawn == 2
        await pilot.press("space", "down", "space")
        assert set(chart.series) == {"1:train", "1:val", "2:train", "2:val"}
        assert [str(table.get_row_at(r)[0]) for r in range(2)] == ["*", "*"]
        await pilot.press("t")
        assert chart.log_y and chart.series["1:val"] == history.curves(screen.marked[0])["val_loss"]
        await pilot.press("e")
        assert (out_dir / "20250101-090000-tiny" / "metrics.csv").is_file()
        await pilot.press("escape")
        assert isinstance(app.screen, SetupScreen)


@sync
async def test_the_history_shows_a_regressions_rmse_on_a_log_scale(
    out_dir: Path, tmp_path: Path
) -> None:
    overrides = regression_overrides(tmp_path, **{"train.epochs": 2})
    config = apply_overrides(RunConfig(), overrides, source="test")
    fit = Trainer(config, sink=lambda event: None, out_dir=out_dir, preset_name="fit")
    fit.run()
    summary = runs.read_summary(fit.run_dir)
    app = create_app(out_dir=out_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen")
        screen = app.screen
        table = screen.query_one(DataTable)
        assert str(table.get_row_at(0)[1]) == fit.run_dir.name  # the newest
        cells = [str(cell) for cell in table.get_row_at(0)[3:5]]
        assert cells == [
            f"rmse {sig(summary['best_val_rmse'])}",
            f"rmse {sig(summary['test_rmse'])}",
        ]
        chart = screen.query_one("#runs-chart", SeriesChart)
        curves = history.curves(fit.run_dir)
        assert chart.log_y and chart.series["val"] == curves["val_rmse"]
        await pilot.press("space", "down", "space")  # beside an accuracy: not on a log scale
        assert not chart.log_y and chart.series["1:val"] == curves["val_rmse"]
        await pilot.press("t")
        assert chart.log_y and chart.series["1:val"] == curves["val_loss"]


@sync
async def test_the_history_resumes_a_stopped_run_and_refuses_a_finished_one(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    stopper: Trainer

    def stop_after_epoch_1(event: object) -> None:
        if isinstance(event, EpochEnd):
            stopper.stop()

    config = apply_overrides(RunConfig(), {**TINY, "train.epochs": 2}, source="test")
    stopper = Trainer(config, sink=stop_after_epoch_1, out_dir=out, preset_name="tiny")
    assert stopper.run()["status"] == "stopped"
    app = create_app(out_dir=out)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("h")
        await wait_until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen")
        history_screen = app.screen
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
        dash = app.screen
        await wait_until(pilot, lambda: dash.state.done, "the resumed run to end")
        assert dash.state.status == "finished" and dash.state.epoch == 2
        await pilot.press("n")  # back to the history, which lists it as finished now
        await wait_until(pilot, lambda: app.screen is history_screen, "the history again")
        assert history_screen.rows[0].status == "finished"
        await pilot.press("r")  # a finished run is not resumed
        await pilot.pause()
        assert app.screen is history_screen


async def shown_view(pilot, screen: ActivationsScreen, name: str) -> None:  # type: ignore[no-untyped-def]
    await wait_until(
        pilot, lambda: screen.view is not None and screen.view.name == name, f"layer {name}"
    )


@sync
async def test_activation_viewer_shows_ranked_edges_and_their_curves(out_dir: Path) -> None:
    app = create_app(out_dir=out_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")  # the newest run with a checkpoint
        await wait_until(pilot, lambda: isinstance(app.screen, ActivationsScreen), "the viewer")
        screen = app.screen
        assert screen.run_dir == out_dir / "20250101-100000-tiny"
        await shown_view(pilot, screen, "kan.0")
        layers, _ = activations.load_layers(screen.run_dir, "last")
        ranked = activations.rank_edges(activations.edge_importance(layers["kan.0"]), 1)
        assert screen.edge == ranked[0][:2]  # the most important edge is shown first
        plot = screen.query_one(EdgePlot)
        expected = activations.edge_curve(layers["kan.0"], *ranked[0][:2])
        assert plot.curve is not None and plot.curve.y == pytest.approx(expected.y)
        info = str(screen.query_one("#act-info", Static).content)
        assert "outside the grid" in info and "uniform sample" in info
        edge_input = screen.query_one("#act-edge", Input)
        assert screen.focused is screen.query_one(DataTable)
        await pilot.press("3", "space", "5", "enter")  # typed with the table focused
        assert edge_input.value == "3 5"
        assert screen.edge == (3, 5) and plot.curve is not None and plot.curve.i == 3
        assert screen.focused is screen.query_one(DataTable)  # the keys are the screen's again
        await pilot.press("right_square_bracket")
        await shown_view(pilot, screen, "kan.1")
        assert screen.query_one(DataTable).row_count == TOP_EDGES


@sync
async def test_setup_shows_the_memory_estimate_and_offers_the_lr_finders_suggestion() -> None:
    app = create_app(config=tiny(), preset_name="lite")
    async with app.run_test(size=SIZE) as pilot:
        line = app.screen.query_one("#memory-line", Static)
        await wait_until(pilot, lambda: "params" in str(line.content), "the memory estimate")
        assert "at batch 64" in str(line.content)
        status = app.screen.query_one("#form-status", Static)
        shown: list[str] = []  # what the status line said while the test ran (it is fast)
        update = status.update

        def recorded(content: object = "") -> None:
            shown.append(str(content))
            update(content)  # type: ignore[arg-type]

        status.update = recorded  # type: ignore[method-assign]
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the LR offer")
        assert any(line.startswith("LR range test: step") for line in shown), shown[:3]
        assert app.screen.query_one("#dialog-chart", SeriesChart).points_drawn > 10  # the curve
        question = app.screen.question
        suggested = question.split("Use ")[1].split(" as")[0]
        await pilot.press("y")
        await wait_until(
            pilot,
            lambda: app.screen.query_one(ConfigForm).values()["optim.lr"] == float(suggested),
            "the suggestion in the form",
        )


@sync
async def test_errors_in_the_workers_are_shown_not_fatal(tmp_path: Path) -> None:
    csv = apply_overrides(tiny(), {"data.dataset": "csv"}, source="test")  # no data_dir
    app = create_app(config=csv, preset_name="lite", out_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        line = app.screen.query_one("#memory-line", Static)
        await wait_until(pilot, lambda: "needs --data-dir" in str(line.content), "the reason")
        empty_run = tmp_path / "20250101-090000-tiny"
        (empty_run / "checkpoints").mkdir(parents=True)
        await app.push_screen(ActivationsScreen(empty_run))
        info = app.screen.query_one("#act-info", Static)
        await wait_until(pilot, lambda: "checkpoint missing" in str(info.content), "the reason")
        await pilot.press("escape")
        assert isinstance(app.screen, SetupScreen)

"""The activation viewer's symbolic fit: drawn over the edge's curve, named with its R² below the
plot, toggled by `f`, and always the fit of the edge shown, however quickly the user moves on.

One real fit (a [2, 1] flat KAN on sin(pi x1) + x2^2, Levenberg-Marquardt, ~2 s of CPU) provides
the run: edge 0 -> 0 learns sin, which the library must name. Waits are condition loops on app
state, never sleeps; the race is staged with events (one fit held until the user has moved on).
"""

from __future__ import annotations

import re
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SIZE, burst, sync, visible_text, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from kan_engine import activations, symbolic
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import SymbolicError
from kan_engine.kan import KANLinear
from kan_engine.trainer import Trainer
from kan_tui import edge_fit
from kan_tui.app import create_app
from kan_tui.screens.activations import FIT_HIDDEN, ActivationsScreen, EdgePlot

SIN_FIT: dict[str, Any] = {
    "model.name": "flat_kan",
    "model.width": [2, 1],
    "data.dataset": "function",
    "data.function": "sin(pi*x1) + x2**2",
    "data.function_train": 400,
    "data.function_test": 100,
    "optim.optimizer": "lm",
    "optim.lr": 1.0,
    "schedule.name": "constant",
    "schedule.warmup_epochs": 0,
    "train.epochs": 3,
    "train.batch_size": 1_000_000,
    "train.steps_per_epoch": 20,
    "train.ema_decay": 0.0,
    "train.device": "cpu",
    "train.dtype": "float64",
    "train.patience": 0,
    "kan.scale_base": 0.0,
    "kan.grid_size": 5,
    "kan.prob_update_grid": 0.0,
}


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def sin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = apply_overrides(RunConfig(), SIN_FIT, source="test")
    out = tmp_path_factory.mktemp("symbolic") / "runs"
    trainer = Trainer(config, sink=lambda event: None, out_dir=out, preset_name="sin")
    trainer.run()
    return trainer.run_dir


def fit_line(screen: ActivationsScreen) -> str:
    return str(screen.query_one("#act-fit", Static).content)


def fitted(screen: ActivationsScreen, edge: tuple[int, int]) -> bool:
    """Whether the line shows a finished fit of `edge`."""
    return fit_line(screen).startswith(f"{edge[0]} -> {edge[1]}  ") and "R²" in fit_line(screen)


def layer_fitted(screen: ActivationsScreen, name: str) -> bool:
    """Whether layer `name` is shown with the fit of its shown edge."""
    view, edge = screen.view, screen.edge
    return view is not None and view.name == name and edge is not None and fitted(screen, edge)


async def open_viewer(pilot: Pilot, run_dir: Path) -> ActivationsScreen:  # type: ignore[type-arg]
    await pilot.app.push_screen(ActivationsScreen(run_dir))
    screen = pilot.app.screen
    assert isinstance(screen, ActivationsScreen)
    await wait_until(pilot, lambda: screen.view is not None, "the first layer")
    return screen


def row_edges(screen: ActivationsScreen) -> list[tuple[int, int]]:
    """The edges in the ranking's order (the table's row keys are `I J`)."""
    table = screen.query_one(DataTable)
    keys = (table.coordinate_to_cell_key((r, 0)).row_key.value for r in range(table.row_count))
    return [tuple(int(v) for v in key.split()) for key in keys if key]  # type: ignore[misc]


@sync
async def test_the_fit_is_drawn_over_the_curve_named_and_toggled(sin_run: Path) -> None:
    app = create_app(out_dir=sin_run.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_viewer(pilot, sin_run)
        await pilot.press("0", "space", "0", "enter")  # the sin edge, whatever its rank
        await wait_until(pilot, lambda: fitted(screen, (0, 0)), "the fit of 0 -> 0")
        line = fit_line(screen)
        assert line.startswith("0 -> 0  sin: ") and "sin(" in line, line
        r2 = float(re.search(r"R² ([0-9.]+)", line).group(1))  # type: ignore[union-attr]
        assert r2 > 0.99
        assert " · then " in line  # the runners-up, with their R²
        plot = screen.query_one(EdgePlot)
        layer = screen.view.layers["kan.0"]  # type: ignore[union-attr]
        expected = edge_fit.fit_view(layer, 0, 0)
        assert plot.series["fit"] == pytest.approx(expected.overlay)
        assert plot.points_drawn == len(plot.curve.x) + len(expected.overlay)  # type: ignore[union-attr]
        assert "⢕ phi  + fit" in visible_text(plot)  # the legend below the plot

        await pilot.press("f")
        assert set(plot.series) == {"phi"} and fit_line(screen) == FIT_HIDDEN
        assert "+ fit" not in visible_text(plot)
        await pilot.press("1", "space", "0", "enter")  # hidden: another edge starts no fit
        assert screen.focused is screen.query_one(DataTable)  # so that f reaches the screen
        assert plot.curve.i == 1 and fit_line(screen) == FIT_HIDDEN  # type: ignore[union-attr]
        await pilot.press("f")
        await wait_until(pilot, lambda: fitted(screen, (1, 0)), "the fit of 1 -> 0 again")
        assert "fit" in plot.series


@sync
async def test_only_the_newest_edges_fit_is_shown(
    sin_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fit (of the edge shown on opening) is held until the user has moved to the
    other edge and seen its fit; released then, it must not replace it. Then a burst of moves
    up and down the ranking ends on the first row, whose fit is what shows."""
    held, release, done = threading.Event(), threading.Event(), threading.Event()
    real = edge_fit.fit_view

    def gated(layer: KANLinear, i: int, j: int, *args: Any) -> edge_fit.EdgeFitView:
        if held.is_set():
            return real(layer, i, j, *args)
        held.set()
        release.wait(timeout=60)
        try:
            return real(layer, i, j, *args)
        finally:
            done.set()

    monkeypatch.setattr(edge_fit, "fit_view", gated)
    app = create_app(out_dir=sin_run.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_viewer(pilot, sin_run)
        first, second = row_edges(screen)
        plot = screen.query_one(EdgePlot)
        await wait_until(pilot, held.is_set, "the first fit to start")
        assert screen.edge == first
        await pilot.press("down")  # the viewer answers while that fit runs
        assert screen.edge == second and plot.curve.i == second[0]  # type: ignore[union-attr]
        await wait_until(pilot, lambda: fitted(screen, second), "the fit of the second edge")
        newest = list(plot.series["fit"])
        release.set()
        await wait_until(pilot, done.is_set, "the held fit to end")
        for _ in range(5):  # let its answer, were it delivered, reach the screen
            await pilot.pause()
        assert fitted(screen, second) and plot.series["fit"] == newest

        await burst(pilot, "up", "down", "up", "down", "up")
        await wait_until(pilot, lambda: fitted(screen, first), "the fit of the last edge")
        assert screen.edge == first
        layer = screen.view.layers["kan.0"]  # type: ignore[union-attr]
        assert plot.series["fit"] == pytest.approx(real(layer, *first).overlay)


@sync
async def test_a_failed_fit_is_said_in_the_line(
    sin_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_sympy(*args: Any, **kwargs: Any) -> tuple[symbolic.EdgeFit, ...]:
        raise SymbolicError("symbolic formulas need sympy: pip install 'kan-tui[symbolic]'")

    monkeypatch.setattr(symbolic, "fit_layer_edge", no_sympy)
    app = create_app(out_dir=sin_run.parent)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_viewer(pilot, sin_run)
        await wait_until(pilot, lambda: "no symbolic fit" in fit_line(screen), "the reason")
        assert "need sympy" in fit_line(screen)
        assert "fit" not in screen.query_one(EdgePlot).series


def test_a_constant_edge_is_named_a_constant_with_nothing_drawn() -> None:
    layer = KANLinear(1, 1, grid_size=5, dtype=torch.float64)
    with torch.no_grad():
        layer.spline_weight.zero_()
        layer.base_weight.zero_()
    view = edge_fit.fit_view(layer, 0, 0)
    assert view.text == "0 -> 0 is constant (0): no function to fit" and view.overlay == []
    assert activations.edge_curve(layer, 0, 0).y == [0.0] * 200  # what the viewer would plot


@sync
async def test_the_fit_follows_the_kan_layers_of_a_cnn_kan_model(
    tmp_path: Path, tiny_config: Any
) -> None:
    """rapid_kan_tiny's KAN head (after its CNN and norms): each layer's shown edge is fitted."""
    config = tiny_config(**{"model.name": "rapid_kan_tiny", "train.epochs": 1,
                            "train.steps_per_epoch": 3})  # fmt: skip
    trainer = Trainer(config, sink=lambda event: None, out_dir=tmp_path / "runs", preset_name="cnn")
    trainer.run()
    app = create_app(out_dir=tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_viewer(pilot, trainer.run_dir)
        plot = screen.query_one(EdgePlot)
        for name in ("kan.0", "kan.1"):
            await wait_until(pilot, partial(layer_fitted, screen, name), f"a fit in {name}")
            assert plot.series["fit"] and re.search(r"  R² -?[0-9.]+", fit_line(screen))
            await pilot.press("right_square_bracket")

"""Charts keep their legend off the data and give every series its own marker, so the LR
groups (cnn, kan, other) are told apart without colour, in the app and in the CLI's charts."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SIZE, fix_memory_estimate, sync, visible_text, wait_until

from kan_tui.app import create_app
from kan_tui.plotting import BRAILLE, text_chart
from kan_tui.widgets.charts import SeriesChart

FRAME_TOP, FRAME_BOTTOM = "┌", "└"


def inside_and_below(lines: list[str]) -> tuple[list[str], list[str]]:
    """The rows of a plotext chart inside its frame, and those below it (ticks, x label)."""
    top = next(k for k, line in enumerate(lines) if FRAME_TOP in line)
    bottom = next(k for k, line in enumerate(lines) if FRAME_BOTTOM in line)
    return lines[top + 1 : bottom], lines[bottom + 1 :]


@pytest.fixture(autouse=True)
def _fixed_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    fix_memory_estimate(monkeypatch)


@sync
async def test_the_lr_preview_legend_is_below_the_plot_with_a_marker_per_group() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        chart = app.screen.query_one("#lr-preview", SeriesChart)
        await wait_until(pilot, lambda: chart.points_drawn > 0, "the LR preview")
        await pilot.pause()
        plot, below = inside_and_below(visible_text(chart).splitlines())
        for label in ("cnn", "kan", "other"):
            assert not any(label in row for row in plot), f"{label!r} is drawn over the data"
        legend = [row for row in below if "epoch" in row]
        assert legend and f"{BRAILLE} cnn  + kan  x other" in legend[0], below
        data = "".join(plot)
        assert "+" in data and "x" in data  # kan's and other's own markers, on the data


def test_cli_charts_put_a_legend_of_several_series_below_and_none_for_one() -> None:
    curve = [(float(x), float(x * x)) for x in range(1, 40)]
    two = text_chart({"train": curve, "val": curve[::4]}, title="t", xlabel="epoch").splitlines()
    plot, below = inside_and_below(two)
    assert not any("train" in row or "val" in row for row in plot)
    assert any(f"epoch    {BRAILLE} train  + val" in row for row in below), below
    one = text_chart({"smoothed loss": curve}, title="t", xlabel="lr").splitlines()
    assert not any("smoothed loss" in row for row in one)  # the title says what it is

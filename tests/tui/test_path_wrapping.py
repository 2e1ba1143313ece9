"""Long paths (run folders, checkpoints) wrap at their separators in the notice log and in
toasts at 80x24, never mid-name: Rich and Textual fold a word wherever the line ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SIZE, regression_replay, sync, visible_text, wait_until

from kan_engine.config import RunConfig
from kan_engine.events import CheckpointWritten
from kan_tui.app import create_app, toast_text_width
from kan_tui.formatting import break_paths
from kan_tui.screens.dashboard import DashboardScreen
from kan_tui.screens.setup import SetupScreen
from kan_tui.widgets.warnings import NoticeLog

RUN = "runs/20250101-120000-lite-flat_kan"  # regression_replay's run folder


@pytest.mark.parametrize("width", [12, 20, 27, 37])
def test_paths_break_after_separators_and_keep_every_character(width: int) -> None:
    path = f"{RUN}/checkpoints/last.pt"
    broken = break_paths(f"checkpoint (manual, epoch 2): {path}, see /tmp/a b", width)
    assert broken.replace("\n", "") == f"checkpoint (manual, epoch 2): {path}, see /tmp/a b"
    lines = broken.split(": ", 1)[1].split(",")[0].splitlines()  # the long path's lines
    assert "".join(lines) == path and max(map(len, lines)) <= width, lines
    assert all(line.endswith(("/", "-", "_", ".")) for line in lines[:-1]), lines


def test_text_without_a_long_path_is_left_to_the_wrap() -> None:
    assert break_paths("a long sentence without paths at all", 5) == (
        "a long sentence without paths at all"
    )
    assert break_paths("short/path here", 20) == "short/path here"


@sync
async def test_the_notice_log_breaks_run_folders_at_separators() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        dash = DashboardScreen(RunConfig(), "lite", Path("runs"), start=False)
        await app.push_screen(dash)
        events = regression_replay()
        events.insert(-1, CheckpointWritten(f"{RUN}/checkpoints/last.pt", 2, "manual"))
        dash.feed(events)
        log = dash.query_one(NoticeLog)
        await wait_until(pilot, lambda: "summary in" in visible_text(log), "the last notice")
        lines = [line.strip("▏ ") for line in visible_text(log).splitlines()]
        # at 80x24 the log is 27 columns: the run folder's name breaks after a hyphen, the
        # checkpoint's path after its separators (the name alone is 29 characters)
        assert lines[-4:] == [
            "last.pt",
            "finished: summary in",
            "runs/20250101-120000-lite-",
            "flat_kan",
        ], lines
        assert "flat_kan/checkpoints/" in lines, lines


@sync
async def test_a_toast_breaks_a_long_path_at_separators() -> None:
    folder = "/home/someone/experiments/kan/runs/20250101-120000-standard-cifar10/exports"
    app = create_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "the setup screen")
        app.notify(f"wrote {folder}/history.csv", markup=False)
        await wait_until(pilot, lambda: bool(app.screen.query("Toast")), "the toast")
        await pilot.pause()
        toast = app.screen.query_one("Toast")
        lines = [line.strip(" ▌▊▎▏▍▋█") for line in visible_text(toast).splitlines()]
        text = [line for line in lines if line]
        assert max(map(len, text)) <= toast_text_width(SIZE[0])
        assert "".join(text) == f"wrote{folder}/history.csv"  # every character, none cut
        for line in text[:-1]:
            assert line.endswith(("/", "-", "_", ".")) or line == "wrote", text

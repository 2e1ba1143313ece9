"""Typing into the setup form as a terminal delivers keys: in bursts (a paste through tmux, fast
fingers), where every key must land in order however busy the form is re-validating."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SIZE, burst, fix_memory_estimate, sync, wait_until
from textual.widgets import Input

from kan_tui.app import create_app
from kan_tui.screens.dialogs import NameDialog


@pytest.fixture(autouse=True)
def _fixed_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    fix_memory_estimate(monkeypatch)


@sync
async def test_a_burst_right_after_clearing_the_lr_field_keeps_every_key() -> None:
    """ctrl+u, backspace and the arrows are Input bindings, which Textual ran only after the key
    had bubbled up past the busy form: the typed text was inserted first, then deleted."""
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        field = app.screen.query_one("#field-optim-lr Input", Input)
        field.focus()
        await pilot.pause()
        await burst(pilot, "ctrl+u", *"0.00987654")
        await wait_until(pilot, lambda: field.value == "0.00987654", f"all keys ({field.value!r})")
        # backspaces, arrows and home in the middle of a burst apply where they were typed
        await burst(pilot, "end", *["backspace"] * 4, *"12", "home", "delete", "5", "left", "1")
        await wait_until(pilot, lambda: field.value == "15.009812", f"in order ({field.value!r})")


@sync
async def test_a_burst_in_the_save_dialog_keeps_every_key() -> None:
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, NameDialog), "the dialog")
        name = app.screen.query_one("#name", Input)
        await burst(pilot, *"mine", "backspace", "backspace", *"ne2")
        await wait_until(pilot, lambda: name.value == "mine2", f"all keys ({name.value!r})")

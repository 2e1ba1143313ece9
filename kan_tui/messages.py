"""The app's own messages: how screens and widgets tell each other what happened.

Widgets post these instead of reaching into each other, so the setup screen can be tested without
a dashboard and the dashboard without a setup screen.
"""

from __future__ import annotations

from textual.message import Message

from kan_engine.config import RunConfig


class FormChanged(Message):
    """The form was edited: the resulting config (None while invalid) and the errors by key."""

    def __init__(self, config: RunConfig | None, errors: dict[str, str]) -> None:
        super().__init__()
        self.config = config
        self.errors = errors


class StartRun(Message):
    """The user asked to train this config; the app opens a dashboard for it."""

    def __init__(self, config: RunConfig, preset_name: str) -> None:
        super().__init__()
        self.config = config
        self.preset_name = preset_name

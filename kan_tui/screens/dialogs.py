"""Small modal dialogs: a yes/no question (with a chart above it, for the LR range test's curve)
and a name prompt that shows why a name was refused."""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from kan_tui.formatting import plain
from kan_tui.widgets.charts import Point, SeriesChart
from kan_tui.widgets.ordered_input import OrderedInput


class ConfirmDialog(ModalScreen[bool]):
    """`y` confirms, `n` or escape declines; the buttons do the same for mouse users."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    DIALOG_CLASSES = "dialog"

    def compose(self) -> ComposeResult:
        with Vertical(classes=self.DIALOG_CLASSES):
            yield from self.above_question()
            yield Label(self.question, classes="dialog-question")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", id="yes", variant="error", compact=True)
                yield Button("No (n)", id="no", compact=True)

    def above_question(self) -> ComposeResult:
        """What a dialog shows above its question (nothing here)."""
        yield from ()

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")


class ChartQuestionDialog(ConfirmDialog):
    """A yes/no question under a chart of what it is about (the LR range test: loss against
    log10 of the LR), so the answer is not taken on trust."""

    def __init__(self, question: str, series: dict[str, list[Point]], xlabel: str) -> None:
        super().__init__(question)
        self.series = series
        self.xlabel = xlabel

    DIALOG_CLASSES = "dialog dialog-wide"

    def above_question(self) -> ComposeResult:
        # Filled as it is built, not on mount: the dialog's first frame already holds the curve.
        chart = SeriesChart(id="dialog-chart", log_y=True)
        chart.show(self.series, xlabel=self.xlabel)
        yield chart


class NameDialog(ModalScreen[str | None]):
    """Asks for a name; `submit(name)` returns why it is refused, or None to close with it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, submit: Callable[[str], str | None]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.submit = submit

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-question")
            yield OrderedInput(placeholder="name (a-z, 0-9, - or _)", id="name")
            yield Static("", id="name-error", classes="dialog-error")
            yield Label("enter saves, escape cancels", classes="dialog-hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        name = event.value.strip()
        reason = self.submit(name)
        if reason is None:
            self.dismiss(name)
        else:
            self.query_one("#name-error", Static).update(plain(reason))  # quotes the name

    def action_cancel(self) -> None:
        self.dismiss(None)

"""The numbers of a run: progress, speed, best epoch, grid updates, gradient norm, device."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from kan_engine import headline
from kan_tui.formatting import duration, measure, num, pct, score, sig
from kan_tui.run_model import RunState

LABEL_WIDTH = 9


def stats_rows(state: RunState) -> list[tuple[str, str]]:
    """Label and value rows; every row fits in 33 columns (the panel at 80x24). Plain strings,
    so that an unchanged panel is detected by comparison and not redrawn."""
    epochs = f"{state.epoch}/{state.epochs}" if state.epochs else "-"
    steps = f"{state.step}/{state.steps_per_epoch}" if state.steps_per_epoch else "-"
    last = f", last @ {state.grid_last_step}" if state.grid_last_step is not None else ""
    outside = max(state.outside_grid.values(), default=None)
    grad = state.grad_norms[-1] if state.grad_norms else None
    rows = [
        ("epoch", f"{epochs} step {steps}"),
        ("speed", f"{state.samples_per_s:,.0f} samples/s"),
        ("ETA", duration(state.eta_seconds())),
        *score_rows(state),
        ("grid upd", f"{state.grid_total}{last}"),
    ]
    if state.grid_per_layer:
        rows.append(("", "  ".join(f"{name} {n}" for name, n in state.grid_per_layer.items())))
    rows.append(("off grid", f"{pct(outside)} max of layers" if outside is not None else "-"))
    rows.append(("grad norm", f"{num(grad)} warnings {state.warning_total}"))
    return rows


def score_rows(state: RunState) -> list[tuple[str, str]]:
    """The train, val, best and test rows of the run's task: a classification's losses and
    accuracies; a regression's RMSE and R² (its loss, the MSE of standardised targets, is the
    RMSE's square in other units: the Loss chart has it; its MAE is in the summary)."""
    best = "-"
    if state.best_epoch:
        best = f"{measure(state.task, state.best_val_score)} @ epoch {state.best_epoch}"
    if state.task != headline.REGRESSION:
        return [
            ("train", f"loss {num(state.last_loss)} acc {pct(state.last_score)}"),
            ("val", f"loss {num(state.val_loss)} acc {pct(state.val_score)}"),
            ("best val", best),
            ("test acc", pct(state.test_score)),
        ]
    return [
        ("train", score(state.task, state.last_score)),
        ("val", _fit(state, "val")),
        ("best val", best),
        ("test", _fit(state, "test")),
    ]


def _fit(state: RunState, split: str) -> str:
    """A regression split's RMSE and R² (`rmse 0.0123 r² 0.998`), "-" before it is measured."""
    rmse, r2 = (state.metrics.get(f"{split}_{name}") for name in ("rmse", "r2"))
    return "-" if rmse is None else f"rmse {sig(rmse)} r² {sig(r2)}"


def stats_text(rows: list[tuple[str, str]]) -> Text:
    """Rows as one Text with aligned, dimmed labels (much cheaper to render than a rich Table,
    which measures its columns on every draw)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for index, (label, value) in enumerate(rows):
        if index:
            text.append("\n")
        text.append(f"{label:<{LABEL_WIDTH}} ", style="dim")
        text.append(value)
    return text


class StatsPanel(Vertical):
    """The numbers table, the grad-norm sparkline under it, and the device line.

    Its parts have fixed heights (app.tcss), so updates skip the layout pass; and a part whose
    content did not change is not updated at all. While training, this keeps the UI thread's
    share of the GIL small.
    """

    def __init__(self, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[object, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static(id="stats-table")
        yield Sparkline([], id="grad-spark", summary_function=max)
        yield Static(id="stats-device")

    def show(self, state: RunState, memory: str) -> None:
        rows = stats_rows(state)
        device = f"{state.device or '-'}  mem {memory}"
        if (rows, device) == self._shown:
            return
        self._shown = (rows, device)
        self.query_one("#stats-table", Static).update(stats_text(rows), layout=False)
        self.query_one(Sparkline).data = [g for g in state.grad_norms if math.isfinite(g)]
        self.query_one("#stats-device", Static).update(
            Text.assemble(("device ", "dim"), device), layout=False
        )

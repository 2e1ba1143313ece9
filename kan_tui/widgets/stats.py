"""The numbers of a run: progress, speed, best epoch, grid updates, gradient norm, device."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from kan_tui.screens.run_model import RunState


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if math.isfinite(value) else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stats_table(state: RunState) -> Table:
    """Two columns, label and value; every row fits in 34 columns."""
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    epochs = f"{state.epoch}/{state.epochs}" if state.epochs else "-"
    steps = f"{state.step}/{state.steps_per_epoch}" if state.steps_per_epoch else "-"
    table.add_row("epoch", f"{epochs}  step {steps}")
    table.add_row("speed", f"{state.samples_per_s:,.0f} samples/s")
    table.add_row("ETA", duration(state.eta_seconds()))
    table.add_row("train", f"loss {num(state.last_loss)}  acc {pct(state.last_acc)}")
    table.add_row("val", f"loss {num(state.val_loss)}  acc {pct(state.val_acc)}")
    best = f"{pct(state.best_val_acc)} @ epoch {state.best_epoch}" if state.best_epoch else "-"
    table.add_row("best val", best)
    table.add_row("test acc", Text(pct(state.test_acc), style="bold" if state.test_acc else ""))
    last = f", last @ {state.grid_last_step}" if state.grid_last_step is not None else ""
    table.add_row("grid upd", f"{state.grid_total}{last}")
    if state.grid_per_layer:
        layers = "  ".join(f"{name} {count}" for name, count in state.grid_per_layer.items())
        table.add_row("", layers)
    outside = max(state.outside_grid.values(), default=None)
    table.add_row("off grid", f"{pct(outside)} max of layers" if outside is not None else "-")
    grad = state.grad_norms[-1] if state.grad_norms else None
    table.add_row("grad norm", f"{num(grad)}  warnings {state.warning_total}")
    return table


class StatsPanel(Vertical):
    """The numbers table, the grad-norm sparkline under it, and the device line."""

    def compose(self) -> ComposeResult:
        yield Static(id="stats-table")
        yield Sparkline([], id="grad-spark", summary_function=max)
        yield Static(id="stats-device")

    def show(self, state: RunState, memory: str) -> None:
        self.query_one("#stats-table", Static).update(stats_table(state))
        finite = [g for g in state.grad_norms if math.isfinite(g)]
        self.query_one(Sparkline).data = finite
        device = state.device or "-"
        self.query_one("#stats-device", Static).update(
            Text.assemble(("device ", "dim"), device, ("  mem ", "dim"), memory)
        )

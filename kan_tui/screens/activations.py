"""The learned-activation viewer: a KAN layer's edges ranked by importance, and phi(x) of one.

It reads the run folder's checkpoint (`last` by default), never the live model: the training
thread owns the model, and a checkpoint is a consistent, atomically written state. While a run
trains, the screen looks at the checkpoint's modification time every POLL_S seconds (one `stat`)
and reloads after each new one (every epoch end, and `c` on the dashboard), so it follows the run
epoch by epoch. Loading and ranking run in a thread worker: a large layer's ranking takes a
second or two. Importance is mean |phi| over a uniform sample of each input's grid range (a
checkpoint stores no inputs), as the info line says. A pruned run's masked edges (`kan-tui
prune`) compute 0: the info line counts them, and they are marked `pruned` where listed.

The edge shown is also matched to the symbolic library (`kan_tui.edge_fit`, the fit `kan-tui
symbolic` makes of every edge): the best candidate is drawn over the curve and named, with its
R² and the runners-up's, in the line below the plot; `f` shows or hides it. The fit (a tenth of a
second or so) runs in a thread worker once the edge has stayed FIT_DELAY_S, so holding an arrow
key down the table starts no fit for the edges passed over, and only the newest request's answer
is shown: an older one still in flight (or already queued) when the edge changed is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import Worker, WorkerState

from kan_engine import activations, runs
from kan_engine.errors import KanError
from kan_engine.kan import KANLinear
from kan_tui import edge_fit
from kan_tui.formatting import plain, printable
from kan_tui.plotting import Point
from kan_tui.widgets.charts import SeriesChart
from kan_tui.widgets.ordered_input import OrderedInput

POLL_S = 2.0
TOP_EDGES = 50
FIT_DELAY_S = 0.15  # an edge stays shown this long before its fit starts
FIT_HIDDEN = "symbolic fit hidden (f shows it)"


@dataclass(frozen=True)
class LayerView:
    """What the worker hands to the screen: one layer of one checkpoint, ranked."""

    layers: dict[str, KANLinear]
    epoch: int
    name: str
    ranked: list[tuple[int, int, float]]
    outside: tuple[float, int] | None
    stamp: float  # the checkpoint's mtime when read


class EdgePlot(SeriesChart):
    """phi(x) of one edge with its grid knots, and the edge's symbolic fit drawn over it (a
    second series: `+` marks, and a legend below the plot)."""

    def __init__(self, **kwargs: str) -> None:
        super().__init__(empty="waiting for a checkpoint", **kwargs)
        self.curve: activations.EdgeCurve | None = None
        self.fit: list[Point] = []
        self.title = ""

    def show_curve(self, curve: activations.EdgeCurve, title: str) -> None:
        """A new edge: its curve, without the fit of the edge shown before."""
        self.curve, self.title, self.fit = curve, title, []
        self._draw()

    def show_fit(self, points: list[Point]) -> None:
        """The fit over the shown curve; [] takes it off."""
        self.fit = points
        self._draw()

    def _draw(self) -> None:
        if self.curve is None:
            return
        series = {"phi": list(zip(self.curve.x, self.curve.y, strict=True))}
        if self.fit:
            series["fit"] = self.fit
        self.show(series, xlabel=f"input {self.curve.i} (dots: grid knots)")

    def decorate(self, plt: Any) -> None:
        if self.curve is not None:
            plt.title(self.title)
            plt.scatter(self.curve.knots, self.curve.knot_values, marker="dot", color="orange")
            for knot in self.curve.knots:
                plt.vline(knot, "gray")


class ActivationsScreen(Screen[None]):
    """`[` / `]` change layer, a row (or `I J` typed below) picks an edge, `b` switches between
    the best and the last checkpoint, `f` shows or hides the symbolic fit, `r` reloads, escape
    goes back."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("left_square_bracket", "layer(-1)", "Prev layer"),
        Binding("right_square_bracket", "layer(1)", "Next layer"),
        Binding("b", "toggle_checkpoint", "Best/last"),
        Binding("f", "toggle_fit", "Fit"),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self, run_dir: Path, checkpoint: str = "last") -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.layer_index = 0
        self.view: LayerView | None = None
        self.edge: tuple[int, int] | None = None
        self._seen_stamp: float | None = None
        self.fit_shown = True
        self._fit_timer: Timer | None = None
        self._fit_worker: Worker[edge_fit.EdgeFitView] | None = None  # the newest request's

    def compose(self) -> ComposeResult:
        yield Static(f"{self.run_dir}: loading the {self.checkpoint} checkpoint...", id="act-info")
        with Horizontal(id="act-main"):
            yield DataTable(id="act-edges", cursor_type="row")
            yield EdgePlot(id="act-plot")
        yield Static(id="act-fit", markup=False)
        yield OrderedInput(
            placeholder="edge: I J, then enter", id="act-edge", compact=True, select_on_focus=False
        )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("#", "in -> out", "mean |phi|")
        self.action_reload()
        self.set_interval(POLL_S, self._poll)

    # --- loading (worker thread) ---------------------------------------------------------------

    def _path(self) -> Path:
        return runs.checkpoint_path(self.run_dir, self.checkpoint)

    def _stamp(self) -> float | None:
        try:
            return self._path().stat().st_mtime
        except OSError:
            return None

    def _poll(self) -> None:
        """Reload when the checkpoint was rewritten (a live run's epoch end)."""
        stamp = self._stamp()
        if stamp is not None and stamp != self._seen_stamp:
            self.action_reload()

    def action_reload(self) -> None:
        self._seen_stamp = self._stamp()
        index, stamp = self.layer_index, self._seen_stamp or 0.0
        self.run_worker(
            lambda: self._load(index, stamp),
            thread=True,
            exclusive=True,
            group="act-load",
            exit_on_error=False,
        )

    def _load(self, index: int, stamp: float) -> LayerView:
        layers, epoch = activations.load_layers(self.run_dir, self.checkpoint)
        names = list(layers)
        name = names[index % len(names)]
        importance = activations.edge_importance(layers[name])
        return LayerView(
            layers=layers,
            epoch=epoch,
            name=name,
            ranked=activations.rank_edges(importance, TOP_EDGES),
            outside=self._outside(name, epoch),
            stamp=stamp,
        )

    def _outside(self, name: str, epoch: int) -> tuple[float, int] | None:
        """The recorded outside-grid share; a damaged metrics.jsonl only loses this number
        (the info line then says it was not recorded), not the whole view."""
        try:
            return activations.outside_share(self.run_dir, name, epoch)
        except KanError:
            return None

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "act-fit":
            self._fit_changed(event.worker, event.state)
            return
        if event.worker.group != "act-load":
            return
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            reason = str(error) if isinstance(error, KanError) else repr(error)
            self.query_one("#act-info", Static).update(plain(f"cannot show activations: {reason}"))
        elif event.state == WorkerState.SUCCESS and isinstance(event.worker.result, LayerView):
            self.apply(event.worker.result)

    # --- showing (UI thread) ---------------------------------------------------------------------

    def apply(self, view: LayerView) -> None:
        self.view = view
        layer = view.layers[view.name]
        outside = (
            f"{view.outside[0]:.1%} of its inputs outside the grid (epoch {view.outside[1]})"
            if view.outside
            else "outside-grid share not recorded"
        )
        info = (
            f"{self.run_dir.name} · {self.checkpoint} checkpoint, epoch {view.epoch} · layer "
            f"{view.name} ({self.layer_index % len(view.layers) + 1}/{len(view.layers)}): "
            f"{layer.in_features} -> {layer.out_features} · {outside}"
        )  # the folder's name is anyone's text: escaped, and a Text (no markup)
        mask = layer.edge_mask
        if mask is not None:
            info += f" · {int((~mask).sum())} of {mask.numel()} edges pruned"
        self.query_one("#act-info", Static).update(
            Text.assemble(printable(info), f"\nranked by mean |phi| over {activations.UNIFORM}")
        )
        table = self.query_one(DataTable)
        table.clear()
        for rank, (i, j, score) in enumerate(view.ranked, 1):
            shown = "pruned" if _pruned(layer, i, j) else f"{score:.3g}"
            table.add_row(str(rank), f"{i} -> {j}", shown, key=f"{i} {j}")
        edge = self.edge if self.edge and self._valid(*self.edge) else view.ranked[0][:2]
        self.show_edge(*edge)

    def _valid(self, i: int, j: int) -> bool:
        layer = self.view.layers[self.view.name] if self.view else None
        return layer is not None and 0 <= i < layer.in_features and 0 <= j < layer.out_features

    def show_edge(self, i: int, j: int) -> None:
        if self.view is None:
            return
        self.edge = (i, j)
        layer = self.view.layers[self.view.name]
        low, high = activations.grid_range(layer, i)
        title = f"{self.view.name}: phi {i} -> {j} on [{low:.3g}, {high:.3g}]"
        if _pruned(layer, i, j):
            title += " (pruned: 0)"
        self.query_one(EdgePlot).show_curve(activations.edge_curve(layer, i, j), title)
        self._request_fit()

    # --- the symbolic fit (worker thread) ------------------------------------------------------

    def _request_fit(self) -> None:
        """The shown edge's fit, once it has stayed FIT_DELAY_S; any answer still coming for
        another edge is dropped from now on."""
        self._fit_worker = None
        if self._fit_timer is not None:
            self._fit_timer.stop()
            self._fit_timer = None
        if not self.fit_shown or self.view is None or self.edge is None:
            return
        layer, (i, j) = self.view.layers[self.view.name], self.edge
        if _pruned(layer, i, j):
            self._fit_line(f"{i} -> {j} is pruned: it is 0, no function to fit")
            return
        self._fit_line(f"fitting {i} -> {j} to the symbolic library...")
        self._fit_timer = self.set_timer(FIT_DELAY_S, partial(self._start_fit, layer, i, j))

    def _start_fit(self, layer: KANLinear, i: int, j: int) -> None:
        self._fit_timer = None
        self._fit_worker = self.run_worker(
            partial(edge_fit.fit_view, layer, i, j),
            thread=True,
            exclusive=True,  # cancels an older fit: Textual drops its answer
            group="act-fit",
            exit_on_error=False,
        )

    def _fit_changed(self, worker: Worker[Any], state: WorkerState) -> None:
        """The newest fit's answer, or why there is none; another worker's is one the user moved
        away from (its state change was queued before the request that replaced it)."""
        if worker is not self._fit_worker:
            return
        if state == WorkerState.ERROR:
            error = worker.error
            reason = str(error) if isinstance(error, KanError) else repr(error)
            self._fit_line(f"no symbolic fit: {reason}")
        elif state == WorkerState.SUCCESS and isinstance(worker.result, edge_fit.EdgeFitView):
            self._fit_line(worker.result.text)
            self.query_one(EdgePlot).show_fit(worker.result.overlay)

    def _fit_line(self, text: str) -> None:
        self.query_one("#act-fit", Static).update(plain(text))

    def action_toggle_fit(self) -> None:
        self.fit_shown = not self.fit_shown
        if not self.fit_shown:
            self.query_one(EdgePlot).show_fit([])
            self._fit_line(FIT_HIDDEN)
        self._request_fit()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value:
            i, j = (int(v) for v in event.row_key.value.split())
            self.show_edge(i, j)

    def on_key(self, event: events.Key) -> None:
        """A digit typed anywhere on the screen starts an edge in the box: picking an edge by
        number must not need a Tab first."""
        box = self.query_one("#act-edge", Input)
        if event.character and event.character.isdigit() and self.focused is not box:
            event.stop()
            box.focus()
            box.value = ""
            box.insert_text_at_cursor(event.character)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        parts = event.value.split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            i, j = int(parts[0]), int(parts[1])
            if self._valid(i, j):
                self.show_edge(i, j)
                self.query_one(DataTable).focus()  # the screen's keys (f, b, r, [ ]) act again
                return
        layer = self.view.layers[self.view.name] if self.view else None
        limits = f" (inputs < {layer.in_features}, outputs < {layer.out_features})" if layer else ""
        typed = printable(repr(event.value))
        self.notify(f"not an edge: {typed}{limits}", severity="warning", markup=False)

    def action_layer(self, step: int) -> None:
        self.layer_index += step
        self.edge = None
        self.action_reload()

    def action_toggle_checkpoint(self) -> None:
        self.checkpoint = "best" if self.checkpoint == "last" else "last"
        self.action_reload()


def _pruned(layer: KANLinear, i: int, j: int) -> bool:
    """Whether the edge i -> j is masked (a pruned run's)."""
    return layer.edge_mask is not None and not bool(layer.edge_mask[j, i])

"""The setup screen: pick a preset, edit the learning-rate strategy, preview the schedule, start.

The form is the preset's config with the user's edits applied; it is valid exactly when the
schema accepts it, and only then can a run start or the LR preview be drawn. Presets are saved and
deleted through `presets_io`, so what this screen saves is what `kan-tui presets show` prints.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Footer, Input, Label, OptionList, Static
from textual.worker import Worker, WorkerState

from kan_engine import names, presets_io
from kan_engine.config import RunConfig
from kan_engine.errors import KanError, PresetError
from kan_tui.formatting import plain, printable
from kan_tui.messages import FormChanged, StartRun
from kan_tui.screens.dialogs import ChartQuestionDialog, ConfirmDialog, NameDialog
from kan_tui.widgets.charts import SeriesChart
from kan_tui.widgets.form import FIELDS, ConfigField, ConfigForm, field_id
from kan_tui.widgets.presets import PresetList

if TYPE_CHECKING:
    from kan_engine.lr_find import LRFinderResult

DEFAULT_PRESET = "lite"
PREVIEW_DEBOUNCE_S = 0.3
PREVIEW_STEPS_PER_EPOCH = 100  # the curve's shape in epochs barely depends on it


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Model and data set names, from the torch-free list the registries are checked against."""
    return {"model.name": tuple(names.MODELS), "data.dataset": tuple(names.DATASETS)}


class SetupScreen(Screen[None]):
    BINDINGS = [
        Binding("r", "start", "Start"),
        # from anywhere, a field too (typing `r` there is text); shown in the footer as the key
        Binding("ctrl+r", "start", "Start", show=False, priority=True),
        Binding("escape", "leave_field", "Leave field", show=False),
        Binding("ctrl+s", "save_as", "Save as"),
        Binding("l", "lr_find", "LR find"),
        Binding("h", "app.open_runs", "Runs"),
        Binding("v", "app.open_activations", "Activations"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, config: RunConfig | None = None, preset_name: str | None = None) -> None:
        super().__init__()
        self.initial_config = config
        self.preset_name = preset_name or DEFAULT_PRESET
        self.config: RunConfig | None = None
        self.errors: dict[str, str] = {}
        self._preview_timer: Timer | None = None
        self._overwrite: str | None = None  # a name whose save waits for "overwrite?"

    def compose(self) -> ComposeResult:
        with Horizontal(id="setup-main"):
            with Vertical(id="presets-pane"):
                yield Label("Presets", classes="pane-title")
                yield PresetList(id="presets")
            yield ConfigForm(registry_choices(), id="form")
        yield Static(id="preset-error")
        with Horizontal(id="setup-bottom"):
            yield SeriesChart(id="lr-preview", empty="LR schedule")
            with Vertical(id="start-pane"):
                yield Static(id="form-status")
                yield Static(id="memory-line")
                yield Button("Start (r)", id="start", variant="success", compact=True)
        yield Static(id="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#preset-error").display = False
        base = self._resolve(self.preset_name) or self.initial_config or RunConfig()
        self.query_one(PresetList).reload(highlight=self.preset_name)
        self.query_one(ConfigForm).load(base, self.initial_config)
        self.query_one(PresetList).focus()

    def _resolve(self, name: str) -> RunConfig | None:
        """The preset's config; None after showing why it cannot be loaded (a hand-edited user
        preset: the file, the key and the reason) in a panel that stays until the next load,
        since a toast would vanish before a long path is read. The form keeps what it had."""
        panel = self.query_one("#preset-error", Static)
        try:
            config, _ = presets_io.resolve(name)
        except KanError as exc:
            reason = printable(exc)  # quotes the file's path and values
            panel.update(Text.assemble((f"cannot load preset {name!r}: ", "bold"), reason))
            panel.display = True
            return None
        panel.display = False
        return config

    # --- form ---------------------------------------------------------------------------------

    def on_form_changed(self, message: FormChanged) -> None:
        self.config, self.errors = message.config, message.errors
        self.query_one("#start", Button).disabled = self.config is None
        self.query_one("#form-status", Static).update(self._status_text())
        if self._preview_timer is not None:
            self._preview_timer.stop()
        self._preview_timer = self.set_timer(PREVIEW_DEBOUNCE_S, self.redraw_preview)
        self.refresh_bindings()

    def _status_text(self) -> Text:
        """A Text, not markup: the reason quotes what the user typed."""
        if self.errors:
            key, reason = next(iter(self.errors.items()))
            label = next((f.label for f in FIELDS if f.key == key), key or "form")
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return Text.assemble(("cannot start", "b red"), printable(f": {label}: {reason}{more}"))
        changed = len(self.query(".field.-changed"))
        edits = f", {changed} field{'s' * (changed != 1)} changed" if changed else ""
        return Text.assemble(("ready", "b green"), printable(f": preset {self.preset_name}{edits}"))

    def redraw_preview(self) -> None:
        """The LR of each group over the whole run, epochs on x, and the memory estimate
        (debounced after edits)."""
        self.estimate_memory()
        chart = self.query_one("#lr-preview", SeriesChart)
        if self.config is None:
            chart.empty = "fix the form to see the LR schedule"
            chart.show({})
            return
        from kan_engine.optim import lr_curve

        chart.show(lr_curve(self.config, steps_per_epoch=PREVIEW_STEPS_PER_EPOCH))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Show the schema's description of the focused field: the help is the schema."""
        widget: Widget | None = event.widget
        while widget is not None and not isinstance(widget, ConfigField):
            widget = widget.parent if isinstance(widget.parent, Widget) else None
        hint = self.query_one("#hint", Static)
        if widget is not None:
            hint.update(f"{widget.spec.key}: {widget.tooltip}")
        elif isinstance(event.widget, PresetList):
            hint.update("enter loads a preset · d deletes a user preset · r starts")
        else:
            hint.update("enter or r starts the run · ctrl+s saves the form as a user preset")

    # --- memory estimate and LR range test (thread workers) ------------------------------------

    def estimate_memory(self) -> None:
        """Parameters and training memory of the form's config, measured in a worker (the
        measurement is cached per model and data set, so batch edits answer at once)."""
        line = self.query_one("#memory-line", Static)
        config = self.config
        if config is None:
            line.update("")
            return
        from kan_engine import memory

        line.update("memory: estimating...")

        def building(_text: str) -> None:  # the CPU extension's first build (~30 s)
            self.app.call_from_thread(
                line.update, "memory: estimating (building the CPU kernel, once: ~30 s)..."
            )

        self.run_worker(
            lambda: (config, memory.estimate(config, notice=building)),
            thread=True,
            exclusive=True,
            group="memory",
            exit_on_error=False,
        )

    def action_lr_find(self) -> None:
        """Run the LR range test on the form's config; offer its suggestion as the base LR."""
        config = self.config
        if config is None:
            self.notify("fix the form before the LR range test", severity="warning")
            return
        from kan_engine.lr_find import find_lr

        self.notify(f"LR range test on {config.model.name} / {config.data.dataset}...")
        status = self.query_one("#form-status", Static)
        status.update("LR range test: loading the data...")

        def progress(step: int, lr: float, loss: float) -> None:  # the worker thread's
            line = f"LR range test: step {step}, lr {lr:.2g}, loss {loss:.3g}"
            self.app.call_from_thread(status.update, line)

        self.run_worker(
            lambda: find_lr(config, progress=progress),
            thread=True,
            exclusive=True,
            group="lr-find",
            exit_on_error=False,
        )

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        group, worker = event.worker.group, event.worker
        if group not in ("memory", "lr-find") or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
        ):
            return
        if event.state == WorkerState.ERROR:
            reason = str(worker.error) if isinstance(worker.error, KanError) else repr(worker.error)
            if group == "memory":
                short = reason.split(";")[0].split("\n")[0][:80]
                self.query_one("#memory-line", Static).update(plain(f"memory: {short}"))
            else:
                failed = printable(f"LR range test failed: {reason}")
                self.notify(failed, severity="error", markup=False)
        elif group == "memory":
            from kan_engine.memory import format_bytes

            config, est = worker.result
            text = f"{est.params:,} params\n~{format_bytes(est.total(config.train.batch_size))}"
            self.query_one("#memory-line", Static).update(
                f"{text} at batch {config.train.batch_size} (training, {config.train.device})"
            )
        else:
            self._offer_lr(worker.result)

    def _offer_lr(self, result: LRFinderResult) -> None:
        self.query_one("#form-status", Static).update(self._status_text())
        if result.suggestion is None:
            self.notify(f"LR range test: no suggestion ({result.stop_reason})", severity="warning")
            return
        lr = float(f"{result.suggestion:.3g}")
        question = (
            f"LR range test: suggested lr {lr:g}, a tenth of the lowest-loss lr "
            f"{result.best_lr:.3g}. Use {lr:g} as the base LR?"
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.query_one(f"#{field_id('optim.lr')}", ConfigField).set_value(lr)

        curve = {
            "loss": [(math.log10(x), y) for x, y in zip(result.lrs, result.smoothed, strict=True)]
        }
        dialog = ChartQuestionDialog(question, curve, "log10 lr (smoothed loss)")
        self.app.push_screen(dialog, answered)

    # --- presets ------------------------------------------------------------------------------

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        name = event.option.id
        config = self._resolve(name) if name else None
        if config is not None and name is not None:
            self.preset_name = name
            self.query_one(ConfigForm).load(config)
            self.notify(f"loaded preset {name!r}")

    def action_save_as(self) -> None:
        if self.config is None:
            self.notify("fix the form before saving", severity="warning")
            return
        dialog = NameDialog("Save the form as a user preset", self._try_save)
        self.app.push_screen(dialog, self._saved)

    def _try_save(self, name: str) -> str | None:
        """Save at once, or return presets_io's reason; an existing user preset asks first."""
        assert self.config is not None
        try:
            presets_io.save(name, self.config)
        except PresetError as exc:
            exists = (
                presets_io.NAME_RE.fullmatch(name)
                and name not in presets_io.BUILTIN_NAMES
                and (presets_io.user_dir() / f"{name}.toml").is_file()
            )
            if not exists:
                return str(exc)
            self._overwrite = name
        return None

    def _saved(self, name: str | None) -> None:
        if name is None:
            return
        if self._overwrite == name:
            self._overwrite = None
            self.app.push_screen(
                ConfirmDialog(f"User preset {name!r} exists. Overwrite it?"),
                lambda yes: self._overwrite_confirmed(name) if yes else None,
            )
            return
        self._after_save(name)

    def _overwrite_confirmed(self, name: str) -> None:
        assert self.config is not None
        presets_io.save(name, self.config, force=True)
        self._after_save(name)

    def _after_save(self, name: str) -> None:
        self.preset_name = name
        assert self.config is not None
        self.query_one(ConfigForm).load(self.config)
        self.query_one(PresetList).reload(highlight=name)
        where = printable(presets_io.user_dir())
        self.notify(f"saved user preset {name!r} in {where}", markup=False)

    def action_delete_preset(self) -> None:
        presets = self.query_one(PresetList)
        name = presets.highlighted_name
        if name is None:
            return
        if presets.presets[name].builtin:
            self.notify(f"{name!r} is a built-in preset and cannot be deleted", severity="warning")
            return
        self.app.push_screen(
            ConfirmDialog(f"Delete user preset {name!r}?"),
            lambda yes: self._delete(name) if yes else None,
        )

    def _delete(self, name: str) -> None:
        try:
            path = presets_io.delete(name)
        except PresetError as exc:
            self.notify(printable(exc), severity="error", markup=False)
            return
        self.query_one(PresetList).reload(highlight=self.preset_name)
        self.notify(f"deleted {printable(path)}", markup=False)

    # --- start --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return self.config is not None or None
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            event.stop()
            self.action_start()

    def action_leave_field(self) -> None:
        """Escape leaves a text field for the preset list, so the one-letter keys work again."""
        if isinstance(self.focused, Input):
            self.query_one("#presets", PresetList).focus()

    def action_start(self) -> None:
        if self.config is None:
            self.notify("the form has errors: fix the marked fields", severity="error")
            return
        self.post_message(StartRun(self.config, self.preset_name))

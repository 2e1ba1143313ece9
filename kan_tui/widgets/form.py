"""The learning-rate strategy form, validated field by field from the config schema.

Its rows are the form's entries of the field table (`kan_tui.options.FIELDS`: key, label,
widget). Nothing here knows a range or a choice list of its own: numbers are checked by applying
the typed value to the preset's config (`apply_overrides`), choice lists come from the schema's
`Literal` types and from the model / data set registries, and the reasons shown are the schema's.
So the form, the preset files and `--set` can never disagree. Under the data folder row, a
`DataNote` says what the user's own data (images, csv) holds, as the engine's readers see it.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Select, Static

from kan_engine.config import RunConfig, apply_overrides, check_names, parse_value, to_data
from kan_engine.errors import ConfigError
from kan_tui.formatting import plain
from kan_tui.messages import FormChanged
from kan_tui.options import FORM_FIELDS, FieldSpec, is_text, schema_choices, schema_field
from kan_tui.widgets.data_note import DataNote, DataRequest
from kan_tui.widgets.ordered_input import OrderedInput

SOURCE = "form"
FIELDS = FORM_FIELDS  # the rows, top to bottom
DATASET, DATA_DIR, TARGET = "data.dataset", "data.data_dir", "data.target"


def lookup(data: dict[str, Any], key: str) -> Any:
    """The value at a dotted key; None for an optional field left out (TOML has no null)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_field(key: str, raw: str, choices: tuple[str, ...] | None) -> Any:
    """Select values pass through; text fields (paths, a column) are taken as typed, empty is
    not set; other typed text is read as a TOML value, like `--set key=value`."""
    if choices is not None:
        return raw
    if is_text(key):
        return raw.strip() or None
    return parse_value(raw.strip())


def validate_form(
    base: RunConfig, values: dict[str, Any]
) -> tuple[RunConfig | None, dict[str, str]]:
    """The combined config (None if any field is bad) and the reason of each bad field.

    Each field is first applied alone to `base`, so every bad field gets its own reason at once;
    rules that tie two fields together (warm-up longer than the run) are checked on the combined
    config and charged to the first field the reason names.
    """
    errors: dict[str, str] = {}
    for key, value in values.items():
        try:
            apply_overrides(base, {key: value}, SOURCE)
        except ConfigError as exc:
            if exc.key == key:
                errors[key] = exc.reason
    if errors:
        return None, errors
    try:
        config = apply_overrides(base, values, SOURCE)
        check_names(config, SOURCE)
    except ConfigError as exc:
        named = [k for k in values if k in exc.reason]
        key = exc.key if exc.key in values else min(named, key=exc.reason.find, default="")
        return None, {key: exc.reason}
    return config, {}


class ConfigField(Horizontal):
    """One row: changed marker, label, editor (Input or Select), and the reason when invalid."""

    def __init__(self, spec: FieldSpec, choices: tuple[str, ...] | None) -> None:
        super().__init__(id=field_id(spec.key), classes="field")
        self.spec = spec
        self.choices = choices
        self.tooltip = schema_field(spec.key).description
        self._marks: tuple[bool, str | None] = (False, None)

    def compose(self) -> ComposeResult:
        yield Static(" ", classes="field-mark")
        yield Label(self.spec.label or self.spec.key, classes="field-label")
        if self.choices is None:
            yield OrderedInput(compact=True, classes="field-input")
        else:
            options = [(choice, choice) for choice in self.choices]
            yield Select(options, allow_blank=False, compact=True, classes="field-select")
        yield Static("", classes="field-reason")

    @property
    def raw(self) -> str:
        if self.choices is None:
            return self.query_one(Input).value
        return str(self.query_one(Select).value)

    def set_value(self, value: Any) -> None:
        if self.choices is None:
            self.query_one(Input).value = "" if value is None else str(value)
            return
        select: Select[str] = self.query_one(Select)
        if str(value) not in self.choices:  # a preset naming an unknown model: show it, flag it
            self.choices = (*self.choices, str(value))
            select.set_options([(choice, choice) for choice in self.choices])
        select.value = str(value)

    def mark(self, *, changed: bool, reason: str | None) -> None:
        """Mark as changed from the preset and / or invalid; a no-op when nothing differs (each
        update of a Static costs a layout pass, and every edit re-marks all fields)."""
        if (changed, reason) == self._marks:
            return
        self._marks = (changed, reason)
        self.set_class(changed, "-changed")
        self.set_class(reason is not None, "-invalid")
        self.query_one(".field-mark", Static).update("*" if changed else " ")
        # a reason quotes what was typed: as markup, `[/]` in the LR field crashed the app
        self.query_one(".field-reason", Static).update(plain(reason) if reason else "")


def field_id(key: str) -> str:
    return "field-" + key.replace(".", "-")


class ConfigForm(VerticalScroll):
    """All fields; posts `FormChanged` after every edit with the validated config or the errors."""

    def __init__(self, choices: dict[str, tuple[str, ...]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra_choices = choices
        self.base = RunConfig()
        self.config: RunConfig | None = None
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        for spec in FIELDS:
            yield ConfigField(spec, self.choices(spec))
            if spec.key == DATA_DIR:  # what the user's own data holds, under its path
                yield DataNote(id="data-note")

    def choices(self, spec: FieldSpec) -> tuple[str, ...] | None:
        """A select's choices (a registry's names, or the schema's `Literal`); None: typed text."""
        if spec.widget == "input":
            return None
        choices = self.extra_choices.get(spec.key) or schema_choices(spec.key)
        if not choices:
            raise ValueError(f"{spec.key}: a select needs a Literal in the schema or a registry")
        return choices

    def fields(self) -> list[ConfigField]:
        return list(self.query(ConfigField))

    def load(self, base: RunConfig, config: RunConfig | None = None) -> None:
        """Fill the form with `config` (default: `base`); changes are marked relative to `base`."""
        self.base = base
        data = to_data(config or base)
        for field in self.fields():
            field.set_value(lookup(data, field.spec.key))
        self.revalidate()

    def values(self) -> dict[str, Any]:
        return {f.spec.key: parse_field(f.spec.key, f.raw, f.choices) for f in self.fields()}

    def revalidate(self) -> None:
        values = self.values()
        self.config, self.errors = validate_form(self.base, values)
        base = to_data(self.base)
        for field in self.fields():
            key = field.spec.key
            field.mark(changed=values[key] != lookup(base, key), reason=self.errors.get(key))
        self.query_one(DataNote).check(self.data_request(values))
        self.post_message(FormChanged(self.config, dict(self.errors)))

    def data_request(self, values: dict[str, Any]) -> DataRequest | None:
        """What the data note looks at; None while a field it reads has the schema's error."""
        if any(key in self.errors for key in (DATASET, DATA_DIR, TARGET)):
            return None
        task = (self.config or self.base).data.task
        return DataRequest(values[DATASET], values[DATA_DIR], values[TARGET], task)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.revalidate()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.revalidate()

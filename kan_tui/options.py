"""The config keys the CLI and the setup form expose, declared once; and from options to a config.

`FIELDS` is the one table: each row names a dotted config key and says how it is exposed, as a
named option of `kan-tui run` (its flag and metavar) and / or a row of the setup form (its label
and widget). The schema says the rest: the type and range that validate a value, the choices of
a select, and the description that becomes the option's help and the form's tooltip. The CLI
builds its options from the table (`kan_tui.cli.base.config_options`) and the form its rows
(`kan_tui.widgets.form`), so exposing a key is one row here plus its schema entry.

Each named option is only a short name for its key (`--lr` is `optim.lr`), and its value is
validated by the schema like a preset value. Precedence is preset < `--set` < named options, and
an error names the option the bad value came from, so `--lr -0.1` reports `--lr: optim.lr: ...`
and not the preset.

This module imports neither Typer nor Textual: the table is plain data.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kan_engine.config import RunConfig, apply_overrides, check_names, parse_value
from kan_engine.errors import ConfigError
from kan_engine.untrusted import short_repr

FLAG = ""  # the metavar of an on/off option: `--compile/--no-compile`


@dataclass(frozen=True)
class FieldSpec:
    """One exposed config key.

    `option`: the parameter name of its `kan-tui run` option (`batch_size`: `--batch-size`, and
    the notes' spelling `--batch_size`), None when the CLI reaches it through `--set` only.
    `metavar`: what the option's value looks like in `--help` (FLAG: an on/off switch).
    `label`: its row in the setup form, None when the form leaves it out. `widget`: typed text
    (read as TOML, like `--set`) or a choice list (the schema's `Literal`, or the model / data
    set registry).
    """

    key: str
    option: str | None = None
    metavar: str = FLAG
    label: str | None = None
    widget: Literal["input", "select"] = "input"

    @property
    def help(self) -> str:
        return describe(self.key)


# in the form's order (top to bottom), which is also the order of the options in `run --help`
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("model.name", "model", "NAME", "model", "select"),
    FieldSpec("data.dataset", "dataset", "NAME", "dataset", "select"),
    FieldSpec("data.data_dir", "data_dir", "PATH", "data folder"),
    FieldSpec("data.target", "target", "COLUMN", "CSV target"),
    FieldSpec("data.function", "function", "FORMULA", "function"),
    FieldSpec("model.width", label="KAN widths"),
    FieldSpec("optim.lr", "lr", "FLOAT", "base LR"),
    FieldSpec("optim.lr_mult.cnn", label="LR x cnn"),
    FieldSpec("optim.lr_mult.kan", label="LR x kan"),
    FieldSpec("optim.lr_mult.other", label="LR x other"),
    FieldSpec("optim.optimizer", "optimizer", "NAME", "optimizer", "select"),
    FieldSpec("optim.weight_decay", "weight_decay", "FLOAT", "weight decay"),
    FieldSpec("schedule.name", "scheduler", "NAME", "schedule", "select"),
    FieldSpec("schedule.warmup_epochs", "warmup_epochs", "FLOAT", "warm-up epochs"),
    FieldSpec("train.epochs", "epochs", "INT", "epochs"),
    FieldSpec("train.batch_size", "batch_size", "INT", "batch size"),
    FieldSpec("train.patience", "patience", "INT", "patience"),
    FieldSpec("train.clip_grad_norm", "clip_grad_norm", "FLOAT", "clip max-norm"),
    FieldSpec("train.label_smoothing", label="label smooth."),
    FieldSpec("train.ema_decay", label="EMA decay"),
    FieldSpec("data.erase_prob", label="erase p"),
    FieldSpec("kan.prob_update_grid", "prob_update_grid", "FLOAT", "grid update p"),
    FieldSpec("kan.grid_update_until", label="grid upd until"),
    FieldSpec("train.mixed_precision", "mixed_precision", "MODE", "mixed prec.", "select"),
    FieldSpec("train.device", "device", "DEVICE"),
    FieldSpec("train.seed", "seed", "INT", "seed"),
    FieldSpec("train.compile", "compile", FLAG),
    FieldSpec("log.report_to", "report_to", "NAME[,NAME]"),
)

# option name -> its row, and option name -> dotted config key (the named options of `run`)
BY_OPTION: dict[str, FieldSpec] = {f.option: f for f in FIELDS if f.option is not None}
OPTION_KEYS: dict[str, str] = {name: f.key for name, f in BY_OPTION.items()}
FORM_FIELDS: tuple[FieldSpec, ...] = tuple(f for f in FIELDS if f.label is not None)


def flags(name: str) -> tuple[str, ...]:
    """`--batch-size` plus the notes' spelling `--batch_size` for multi-word options."""
    dashed = f"--{name.replace('_', '-')}"
    return (dashed, f"--{name}") if "_" in name else (dashed,)


def schema_field(key: str) -> FieldInfo:
    """The pydantic FieldInfo of a dotted key."""
    model: type[BaseModel] = RunConfig
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation  # type: ignore[assignment]
    return model.model_fields[name]


def schema_choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of a `Literal` field, None for free-form fields."""
    annotation = schema_field(key).annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    return None


def is_text(key: str) -> bool:
    """Whether a field holds free text (a path, a column name) that is taken as typed, not read
    as TOML: a column named `2` or a folder named `true` stays text; empty means not set."""
    annotation = schema_field(key).annotation
    return annotation is str or set(typing.get_args(annotation)) == {str, type(None)}


def describe(key: str) -> str:
    """The schema's description of a dotted key, for help texts."""
    return f"{schema_field(key).description} ({key})"


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set section.key=value` items as dotted overrides; values are read as TOML."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError("--set", item, "expected section.key=value (e.g. optim.lr=0.003)")
        value = parse_value(text.strip())
        if key in overrides and overrides[key] != value:
            first, second = short_repr(overrides[key]), short_repr(value)
            reason = f"given twice with different values ({first} and {second})"
            raise ConfigError("--set", key, reason)
        overrides[key] = value
    return overrides


def resolve(
    preset_config: RunConfig, preset_source: str, sets: list[str], named: dict[str, Any]
) -> RunConfig:
    """Apply `--set` items, then the named options given (None = not given), and validate.

    Everything is applied in one go, so that options that only agree together (`--epochs 3
    --warmup-epochs 1` on a preset with 5 warm-up epochs) are accepted.
    """
    overrides = parse_sets(sets)
    sources = dict.fromkeys(overrides, "--set")
    for name, value in named.items():
        if value is None:
            continue
        overrides[OPTION_KEYS[name]] = value
        sources[OPTION_KEYS[name]] = flags(name)[0]
    if "target" in named and named["target"] is not None:
        dataset = overrides.get("data.dataset", preset_config.data.dataset)
        if dataset != "csv":
            reason = f"only applies to csv data (the dataset is {dataset!r})"
            raise ConfigError("--target", "data.target", reason)
    combined = " + ".join([preset_source, *sorted(set(sources.values()))])
    try:
        config = apply_overrides(preset_config, overrides, combined) if overrides else preset_config
        check_names(config, source=combined)
    except ConfigError as exc:
        # name the option that set the bad key; whole-config errors keep the combined source
        owner = [src for key, src in sources.items() if f"{exc.key}.".startswith(f"{key}.")]
        if not owner:
            raise
        raise ConfigError(owner[0], exc.key, exc.reason) from None
    return config

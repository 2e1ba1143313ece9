"""From command-line options to one validated RunConfig.

The config schema stays the single source of truth: each named option of `kan-tui run` is only a
short name for one dotted config key (`--lr` is `optim.lr`), its help text is the schema's
description, and its value is validated by the schema like a preset value. Precedence is
preset < `--set` < named options, and an error names the option the bad value came from, so
`--lr -0.1` reports `--lr: optim.lr: ...` and not the preset.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kan_engine.config import RunConfig, apply_overrides, check_names, parse_value
from kan_engine.errors import ConfigError
from kan_engine.untrusted import short_repr

# parameter name of `kan-tui run` -> dotted config key (the dashed flag is derived from the name)
OPTION_KEYS: dict[str, str] = {
    "model": "model.name",
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "target": "data.target",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "optimizer": "optim.optimizer",
    "scheduler": "schedule.name",
    "warmup_epochs": "schedule.warmup_epochs",
    "patience": "train.patience",
    "clip_grad_norm": "train.clip_grad_norm",
    "prob_update_grid": "kan.prob_update_grid",
    "mixed_precision": "train.mixed_precision",
    "device": "train.device",
    "seed": "train.seed",
    "compile": "train.compile",
}


def flags(name: str) -> tuple[str, ...]:
    """`--batch-size` plus the notes' spelling `--batch_size` for multi-word options."""
    dashed = f"--{name.replace('_', '-')}"
    return (dashed, f"--{name}") if "_" in name else (dashed,)


def describe(key: str) -> str:
    """The schema's description of a dotted key, for help texts."""
    node: type[BaseModel] = RunConfig
    *sections, leaf = key.split(".")
    for section in sections:
        node = node.model_fields[section].annotation  # type: ignore[assignment]
    return f"{node.model_fields[leaf].description} ({key})"


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

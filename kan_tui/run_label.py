"""What a new run folder is named after: its preset, and its model when that is not the preset's.

A run started as `--model rapid_kan_power` on the `lite` preset is labelled
`lite-rapid_kan_power` (folder name, `runs list`) and its description says so, since the preset's
own description would name the wrong model. The label is only a name: the preset itself stays
`lite` wherever a preset is looked up (the TUI's setup screen loads it after the run).
"""

from __future__ import annotations

from kan_engine.config import RunConfig
from kan_engine.errors import KanError

__all__ = ["by_model", "for_preset"]


def by_model(
    config: RunConfig, preset_config: RunConfig, preset_name: str
) -> tuple[RunConfig, str]:
    """(config, label) for a run of `config` made from the preset `preset_name`."""
    model = config.model.name
    if model == preset_config.model.name:
        return config, preset_name
    described = config.model_copy(update={"description": f"{preset_name} preset, model {model}"})
    return described, f"{preset_name}-{model}"


def for_preset(config: RunConfig, preset_name: str) -> tuple[RunConfig, str]:
    """`by_model` against the preset of that name; a preset that cannot be read (deleted since
    the form was filled) labels the run by its name alone."""
    from kan_engine import presets_io

    try:
        preset_config, _ = presets_io.resolve(preset_name)
    except KanError:
        return config, preset_name
    return by_model(config, preset_config, preset_name)

"""One validated config object drives a run.

`RunConfig` is the single source of truth: preset files are its TOML form, CLI options and `--set`
override its fields, and the TUI form validates each field against it. Unknown keys are errors and
every number has a range, so a typo in a hand-edited preset is caught before any training starts.
Model and dataset names are checked against the registries when a config is resolved for a run
(`check_names`), so that loading a preset stays free of torch imports.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kan_engine.errors import ConfigError

Optimizer = Literal["adamw", "adam", "sgd"]
Schedule = Literal["cosine", "onecycle", "step", "constant"]
Precision = Literal["auto", "bf16", "fp16", "off"]
Init = Literal["identity", "noise"]

GROUPS = ("cnn", "kan", "other")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(_Section):
    name: str = Field("rapid_kan_lite", description="model from the registry (kan-tui models)")


class DataSection(_Section):
    dataset: str = Field(
        "fashion-mnist", description="fashion-mnist, mnist, cifar10, digits, images, csv"
    )
    data_dir: str | None = Field(
        None, description="folder holding the data set (or the folder/CSV of your own data)"
    )
    target: str | None = Field(
        None, description="CSV only: label column (default: the last column)"
    )
    val_fraction: Annotated[float, Field(ge=0.01, le=0.5)] = Field(
        0.1, description="share of the training set held out for validation"
    )
    augment: bool = Field(False, description="random shifts / flips of training images")
    erase_prob: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="chance per training image of erasing a random rectangle (0 = off)"
    )
    test_every_epoch: bool = Field(
        False, description="also evaluate the test split after every epoch"
    )


class GroupMultipliers(_Section):
    cnn: Annotated[float, Field(gt=0, le=100)] = Field(
        1.0, description="LR multiplier of CNN layers"
    )
    kan: Annotated[float, Field(gt=0, le=100)] = Field(
        3.0, description="LR multiplier of KAN layers"
    )
    other: Annotated[float, Field(gt=0, le=100)] = Field(
        1.5, description="LR multiplier of BatchNorm, biases and scales"
    )


class OptimSection(_Section):
    lr: Annotated[float, Field(gt=0, le=10)] = Field(0.001, description="base learning rate")
    lr_mult: GroupMultipliers = Field(default_factory=GroupMultipliers)
    optimizer: Optimizer = Field("adamw", description="adamw, adam or sgd")
    weight_decay: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01, description="decoupled (adamw) or L2"
    )
    beta1: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="Adam beta1")
    beta2: Annotated[float, Field(ge=0, lt=1)] = Field(0.999, description="Adam beta2")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="SGD momentum")


class ScheduleSection(_Section):
    name: Schedule = Field("cosine", description="cosine, onecycle, step or constant")
    warmup_epochs: Annotated[float, Field(ge=0, le=1000)] = Field(
        5,
        description="linear warm-up from lr/100, per batch (10 % of a shorter run)",
    )
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01, description="cosine floor, as a share of lr"
    )
    step_epochs: Annotated[int, Field(ge=1, le=10000)] = Field(
        15, description="step: epochs between decays"
    )
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.1, description="step: decay factor")


class TrainSection(_Section):
    epochs: Annotated[int, Field(ge=1, le=100000)] = Field(
        50, description="maximum number of epochs"
    )
    batch_size: Annotated[int, Field(ge=1, le=1048576)] = Field(64, description="samples per step")
    patience: Annotated[int, Field(ge=0, le=100000)] = Field(
        15, description="early stopping: epochs without a better val accuracy (0 = off)"
    )
    clip_grad_norm: Annotated[float, Field(ge=0, le=1e6)] = Field(
        1.0, description="gradient clipping max-norm (0 = off)"
    )
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="share of each training target spread over the other classes"
    )
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="decay of the weight average used for eval and best.pt (0 = off)"
    )
    mixed_precision: Precision = Field(
        "auto", description="auto (bf16 on CUDA, off on CPU), bf16, fp16, off"
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, description="seed for Python, NumPy and torch"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    log_every: Annotated[int, Field(ge=1, le=100000)] = Field(
        20, description="steps between step-metric events (device read-backs)"
    )
    compile: bool = Field(False, description="torch.compile the model (CUDA)")
    cuda_graphs: bool = Field(
        True, description="replay each training step as one CUDA graph (CUDA, adam/adamw)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        ok = value in ("auto", "cpu", "cuda", "mps") or (
            value.startswith("cuda:") and value[5:].isdigit()
        )
        if not ok:
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps (got {value!r})")
        return value


class KanSection(_Section):
    grid_size: Annotated[int, Field(ge=1, le=1000)] = Field(
        5, description="B-spline intervals per edge"
    )
    spline_order: Annotated[int, Field(ge=1, le=10)] = Field(
        3, description="B-spline order (3 = cubic)"
    )
    grid_range: tuple[float, float] = Field((-2.0, 2.0), description="grid interval [low, high]")
    scale_base: Annotated[float, Field(ge=0, le=100)] = Field(
        2.5, description="strength of the base (SiLU) branch"
    )
    scale_spline: Annotated[float, Field(ge=0, le=100)] = Field(
        1.0, description="strength of the spline branch"
    )
    init: Init = Field("identity", description="identity-like start or small noise")
    prob_update_grid: Annotated[float, Field(ge=0, le=1)] = Field(
        0.1, description="chance per step of adapting the grids to the batch"
    )
    grid_update_every: Annotated[int, Field(ge=0, le=1000000)] = Field(
        0, description="also adapt the grids every N steps (0 = off)"
    )
    grid_update_until: Annotated[int, Field(ge=0, le=100000000)] = Field(
        0, description="stop grid updates after this many steps (0 = never stop)"
    )
    reg_weight: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0, description="weight of the KAN L1 + entropy regulariser"
    )

    @field_validator("grid_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"must be two finite numbers, low < high (got {list(value)})")
        return value


class RunConfig(_Section):
    """Everything that defines a run; a preset file is this object as TOML."""

    description: str = Field("", description="one line shown in preset lists")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=TrainSection)
    kan: KanSection = Field(default_factory=KanSection)


def first_error(exc: ValidationError, source: str) -> ConfigError:
    """Turn pydantic's report into the one line the user sees: `source: key: reason (got value)`."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    reason = err["msg"]
    if reason.startswith("Value error, "):
        reason = reason[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
    elif err["loc"] and "input" in err and err["type"] != "missing" and "(got" not in reason:
        # a whole-config check (empty loc) has the entire config as its input: not worth echoing
        reason = f"{reason} (got {err['input']!r})"
    return ConfigError(source, key, reason)


def validate_config(data: dict[str, Any], source: str = "") -> RunConfig:
    """Build a RunConfig from plain data, raising ConfigError that names the source and key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise first_error(exc, source) from None


def to_data(config: RunConfig) -> dict[str, Any]:
    """Plain, TOML-ready data (no None values: TOML has no null)."""
    return config.model_dump(mode="json", exclude_none=True)


def parse_value(text: str) -> Any:
    """Read the value part of `--set key=value` as TOML, falling back to a bare string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(
    config: RunConfig, overrides: dict[str, Any], source: str = "--set"
) -> RunConfig:
    """Return a new config with dotted keys (`optim.lr`) replaced, validated as a whole."""
    data = to_data(config)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = data
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ConfigError(source, dotted, "unknown key")
            node = node[part]
        if parts[-1] not in RunConfig.model_fields and len(parts) == 1:
            raise ConfigError(source, dotted, "unknown key")
        node[parts[-1]] = value
    return validate_config(data, source)


def check_names(config: RunConfig, source: str = "") -> None:
    """Check model and dataset names against the registries (imports torch, so only for runs)."""
    from kan_engine.data import DATASETS
    from kan_engine.models import MODELS

    if config.model.name not in MODELS:
        raise ConfigError(
            source,
            "model.name",
            f"unknown model {config.model.name!r} (known: {', '.join(MODELS)})",
        )
    if config.data.dataset not in DATASETS:
        raise ConfigError(
            source,
            "data.dataset",
            f"unknown dataset {config.data.dataset!r} (known: {', '.join(DATASETS)})",
        )

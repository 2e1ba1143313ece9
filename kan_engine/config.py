"""One validated config object drives a run.

`RunConfig` is the single source of truth: preset files are its TOML form, CLI options and `--set`
override its fields, and the TUI form validates each field against it. Unknown keys are errors and
every number has a range, so a typo in a hand-edited preset is caught before any training starts.
Model and dataset names are checked against the catalogue of `kan_engine.names` when a config is
resolved for a run (`check_names`); like this module it imports no torch, so loading, saving and
checking a preset never does.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kan_engine import names, untrusted
from kan_engine.errors import ConfigError
from kan_engine.names import Init

Optimizer = Literal["adamw", "adam", "sgd", "lbfgs", "lm"]
Task = Literal["auto", "classification", "regression"]
Schedule = Literal["cosine", "onecycle", "step", "constant"]
Precision = Literal["auto", "bf16", "fp16", "off"]
Tracker = Literal["tensorboard", "mlflow", "wandb", "trackio"]

GROUPS = ("cnn", "kan", "other")

NAME_MAX = 100  # characters of a model or data set name (the registries' are < 20)
PATH_MAX = 4096  # characters of a path (Linux's PATH_MAX)
DESCRIPTION_MAX = 200
GRID_BOUND = 1e4  # |grid_range| ends: KAN layer inputs are normalised (mean 0, std ~1)
GRID_STEP_MIN = 1e-3  # an interval, relative to max(1, |low|, |high|): float32 knots stay apart


def _numeric(annotation: Any) -> bool:
    """An int or float field, or a tuple of them (grid_range)."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) is tuple and all(a in (int, float) for a in args)


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(isinstance(item, bool) for item in value)
    return isinstance(value, bool)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """TOML's `true` is not a number: pydantic would read it as 1 (`batch_size = true` was
        a batch of one). One check for every numeric field of every section, present and
        future; ints stay welcome in float fields, and the CLI's option text still parses."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _numeric(field.annotation) and _holds_bool(value):
            raise ValueError("must be a number, not true or false")
        return value


def _check_path_text(value: str | None) -> str | None:
    """A path or column name: NUL ends a C string, so every os call would raise ValueError on
    it mid-run. (Bytes that are not UTF-8, lone surrogates, pydantic refuses already.)"""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain a NUL character")
    return value


WIDTH_MAX = 100000  # nodes of one layer of a flat model
EXPRESSION_MAX = 1000  # characters of a function's expression


class ModelSection(_Section):
    name: str = Field(
        "rapid_kan_lite",
        max_length=NAME_MAX,
        description="model from the registry (kan-tui models)",
    )
    width: list[Annotated[int, Field(ge=1, le=WIDTH_MAX)]] = Field(
        default_factory=list,
        max_length=64,
        description="flat_kan / flat_mlp: nodes per layer, inputs to outputs, e.g. [2, 5, 1]",
    )
    init_from: str | None = Field(
        None,
        max_length=PATH_MAX,
        description="start from these weights (a kan-tui checkpoint; a relative path is read "
        "from the run folder: kan-tui prune writes checkpoints/init.pt)",
    )

    _paths = field_validator("init_from")(_check_path_text)


class DataSection(_Section):
    dataset: str = Field(
        "fashion-mnist",
        max_length=NAME_MAX,
        description=", ".join(names.DATASETS),
    )
    data_dir: str | None = Field(
        None,
        max_length=PATH_MAX,
        description="folder holding the data set (or the folder/CSV of your own data)",
    )
    target: str | None = Field(
        None, max_length=PATH_MAX, description="CSV only: label column (default: the last column)"
    )
    task: Task = Field(
        "auto",
        description="auto (regression for functions and continuous CSV targets), "
        "classification or regression",
    )
    function: str | None = Field(
        None,
        max_length=EXPRESSION_MAX,
        description="function data: a named function (kan-tui datasets) or an expression in "
        "x1, x2, ... such as exp(sin(pi*x1) + x2**2)",
    )
    function_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="function data: the interval each input is sampled in"
    )
    function_train: Annotated[int, Field(ge=4, le=10_000_000)] = Field(
        1000, description="function data: training samples (validation is carved from them)"
    )
    function_test: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        1000, description="function data: test samples"
    )
    function_noise: Annotated[float, Field(ge=0, le=1e6)] = Field(
        0.0, description="function data: std of Gaussian noise added to the training targets"
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

    _paths = field_validator("data_dir", "target", "function")(_check_path_text)

    @field_validator("function_range")
    @classmethod
    def _box(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError("must be two finite numbers, low < high")
        return value


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
    optimizer: Optimizer = Field(
        "adamw",
        description="adamw, adam, sgd, or for full-batch fits lbfgs or lm (Levenberg-Marquardt)",
    )
    weight_decay: Annotated[float, Field(ge=0, le=1)] = Field(
        0.01, description="decoupled (adamw) or L2"
    )
    beta1: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="Adam beta1")
    beta2: Annotated[float, Field(ge=0, lt=1)] = Field(0.999, description="Adam beta2")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="SGD momentum")
    lbfgs_iters: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="lbfgs: iterations (each with a line search) per step"
    )


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
    # >= 2: BatchNorm and the KAN grid update need two samples of a batch
    batch_size: Annotated[int, Field(ge=2, le=10_000_000)] = Field(
        64, description="samples per step (at least the training split: full batch)"
    )
    steps_per_epoch: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        0, description="steps per epoch (0 = one pass over the training split; more repeat it)"
    )
    patience: Annotated[int, Field(ge=0, le=100000)] = Field(
        15, description="early stopping: epochs without a better val accuracy (0 = off)"
    )
    clip_grad_norm: Annotated[float, Field(ge=0, le=1e6)] = Field(
        1.0, description="gradient clipping max-norm (0 = off)"
    )
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="share of each training target spread over the other classes"
    )
    huber_delta: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0,
        description="regression: Huber loss with this delta on standardised targets (0 = MSE)",
    )
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="decay of the weight average used for eval and best.pt (0 = off)"
    )
    mixed_precision: Precision = Field(
        "auto", description="auto (bf16 on CUDA, off on CPU), bf16, fp16, off"
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32", description="weights and data; float64 for function fits below 1e-5 RMSE"
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
        # ASCII digits only, at most 4 (str.isdigit takes '²' and torch then fails to parse it)
        ok = value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:[0-9]{1,4}", value)
        if not ok:
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value


# The `[kan]` fields a model is built with (`models.build(name, ..., **options)`); the others steer
# training (grid updates, the regulariser).
MODEL_OPTIONS = (
    "grid_size",
    "spline_order",
    "grid_range",
    "scale_base",
    "scale_spline",
    "init",
    "grid_eps",
)


class KanSection(_Section):
    # <= 100: a layer holds in x out x (grid_size + spline_order + 1) weights and builds a basis
    # of that size per sample; at 1000 one digits epoch took minutes on a CPU core
    grid_size: Annotated[int, Field(ge=1, le=100)] = Field(
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
    grid_eps: Annotated[float, Field(ge=0, le=1)] = Field(
        0.02, description="grid updates: share of uniform knots (the rest follow the samples)"
    )
    grid_margin: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="grid updates: room beyond the samples' range, as a share of it"
    )
    grid_keep_range: bool = Field(
        True, description="grid updates never shrink a grid below grid_range (off: samples only)"
    )
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
    grid_schedule: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default_factory=list,
        max_length=32,
        description="grid extension: grid sizes of successive stages, e.g. [3, 5, 10] "
        "(replaces grid_size; empty = one grid)",
    )
    grid_stage_epochs: Annotated[int, Field(ge=0, le=100000)] = Field(
        0, description="grid extension: epochs per stage (the last stage runs to the end)"
    )

    @field_validator("grid_range")
    @classmethod
    def _range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        """Finite, ordered, near the normalised inputs, and with intervals that float32 can
        tell apart: [-1e300, 1e300] overflowed the knots to inf and crashed training."""
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError("must be two finite numbers, low < high")
        if max(abs(low), abs(high)) > GRID_BOUND:
            raise ValueError(f"must lie within [-{GRID_BOUND:g}, {GRID_BOUND:g}]")
        grid_size = info.data.get("grid_size")  # absent when it was invalid itself
        if grid_size is not None:
            step, least = (high - low) / grid_size, GRID_STEP_MIN * max(1.0, abs(low), abs(high))
            if step < least:
                raise ValueError(
                    f"is too narrow for {grid_size} intervals: each would be {step:.3g} wide, "
                    f"under {least:.3g} ({GRID_STEP_MIN:g} x max(1, |low|, |high|))"
                )
        return value

    @model_validator(mode="after")
    def _stages(self) -> KanSection:
        """A grid schedule refines: each stage's grid finer than the last, every stage given
        epochs, and the finest grid's intervals still apart on the grid range."""
        schedule = self.grid_schedule
        if not schedule:
            return self
        if any(b <= a for a, b in zip(schedule, schedule[1:], strict=False)):
            raise ValueError(f"kan.grid_schedule: must increase (got {schedule})")
        if self.grid_stage_epochs < 1:
            raise ValueError("kan.grid_stage_epochs: must be >= 1 when kan.grid_schedule is set")
        low, high = self.grid_range
        step, least = (high - low) / schedule[-1], GRID_STEP_MIN * max(1.0, abs(low), abs(high))
        if step < least:
            raise ValueError(
                f"kan.grid_range: too narrow for {schedule[-1]} intervals (kan.grid_schedule)"
            )
        return self

    def stage_grids(self) -> list[int]:
        """Grid size of each stage: the schedule, or the one grid."""
        return list(self.grid_schedule) or [self.grid_size]

    def stage_of(self, epoch: int) -> int:
        """The stage (0-based) that trains `epoch` (1-based); the last one runs to the end."""
        if not self.grid_schedule:
            return 0
        return min((epoch - 1) // self.grid_stage_epochs, len(self.grid_schedule) - 1)

    def build_options(self) -> dict[str, Any]:
        """The fields of `MODEL_OPTIONS` by name: the options a model is built with (the first
        stage's grid, when there is a schedule)."""
        options = {name: getattr(self, name) for name in MODEL_OPTIONS}
        options["grid_size"] = self.stage_grids()[0]
        return options


class LogSection(_Section):
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="trackers that also get the metrics: tensorboard (<run>/tensorboard/), "
        "mlflow ($MLFLOW_TRACKING_URI or <out>/mlflow.db), wandb (<run>/wandb/, offline "
        "unless logged in), trackio ($TRACKIO_DIR); none",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """`--report-to tensorboard` and `--set log.report_to=tensorboard,...` as well as a
        TOML list; `none` (or nothing) means no tracker, as in Hugging Face's `report_to`."""
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            value = [] if names == ["none"] else names
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return list(dict.fromkeys(value))  # each tracker once: two would write one folder
        return value


class RunConfig(_Section):
    """Everything that defines a run; a preset file is this object as TOML."""

    description: str = Field(
        "", max_length=DESCRIPTION_MAX, description="one line shown in preset lists"
    )
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=TrainSection)
    kan: KanSection = Field(default_factory=KanSection)
    log: LogSection = Field(default_factory=LogSection)

    @model_validator(mode="after")
    def _extension_without_average(self) -> RunConfig:
        """A weight average is only meaningful over one set of coefficients; grid extension
        replaces them at every stage (and changes their shape)."""
        if self.kan.grid_schedule and self.train.ema_decay > 0:
            raise ValueError(
                "train.ema_decay: must be 0 with kan.grid_schedule (each stage replaces the "
                "coefficients the average would be of)"
            )
        return self

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        """Shown in lists and tables: a terminal escape, CR or LF would retitle the window or
        forge a line there (display escapes it too; this says so where the text is made)."""
        bad = untrusted.has_unprintable(value)
        if bad is not None:
            raise ValueError(f"must be one line of printable text (holds {bad})")
        return value


def first_error(exc: ValidationError, source: str) -> ConfigError:
    """Turn pydantic's report into the one line the user sees: `source: key: reason (got value)`."""
    err = exc.errors()[0]
    key = ".".join(untrusted.short(str(p), 40) for p in err["loc"])
    reason = err["msg"]
    if reason.startswith("Value error, "):
        reason = reason[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
    elif err["loc"] and "input" in err and err["type"] != "missing" and "(got" not in reason:
        # a whole-config check (empty loc) has the entire config as its input: not worth echoing
        reason = f"{reason} (got {untrusted.short_repr(err['input'])})"
    return ConfigError(source, key, reason)


def validate_config(data: dict[str, Any], source: str = "") -> RunConfig:
    """Build a RunConfig from plain data, raising ConfigError that names the source and key.

    Absurd nesting is refused first: pydantic (and repr) recurse into it and a table a thousand
    levels deep ended in RecursionError."""
    untrusted.check_depth(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise first_error(exc, source) from None


def to_data(config: RunConfig) -> dict[str, Any]:
    """Plain, TOML-ready data (no None values: TOML has no null)."""
    return config.model_dump(mode="json", exclude_none=True)


def dotted_items(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested config data (`to_data`): `optim.lr_mult.kan`."""
    for key, value in data.items():
        if isinstance(value, dict):
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_value(text: str) -> Any:
    """Read the value part of `--set key=value` as TOML, falling back to a bare string.

    Never raises (the TUI form calls it on every keystroke): text that TOML refuses, nests
    hundreds deep (RecursionError), holds an integer past Python's digit limit (ValueError) or
    smuggles in a second key after a newline is the bare string, which the schema then judges."""
    import tomllib

    try:
        parsed = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return text
    return parsed["v"] if len(parsed) == 1 else text


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
    """Check the model and dataset names against the catalogue (`kan_engine.names`, no torch)."""
    if config.model.name not in names.MODELS:
        reason = names.unknown("model", untrusted.short_repr(config.model.name), names.MODELS)
        raise ConfigError(source, "model.name", reason)
    if config.data.dataset not in names.DATASETS:
        shown = untrusted.short_repr(config.data.dataset)
        raise ConfigError(source, "data.dataset", names.unknown("dataset", shown, names.DATASETS))


def limits(key: str) -> dict[str, Any]:
    """The bounds the schema puts on a dotted numeric key, by kind (`train.batch_size` ->
    {"ge": 2, "le": 1048576}): code that needs one reads it here instead of copying it."""
    *sections, name = key.split(".")
    schema: Any = RunConfig
    for part in sections:
        schema = schema.model_fields[part].annotation
    found: dict[str, Any] = {}
    for item in schema.model_fields[name].metadata:
        for kind in ("gt", "ge", "lt", "le"):
            if getattr(item, kind, None) is not None:
                found[kind] = getattr(item, kind)
    return found

"""Time to accuracy: train several models on the same data and budget, and tabulate when each
reached 85 %, 90 %, 92 % and 93 % accuracy (the notes' comparison table, with measured numbers).

Why from the run folders. Each model trains into an ordinary run folder (resumable, `kan-tui
eval`-able), grouped under one `<stamp>-compare-<preset>/` folder, and the table is computed from
what those folders hold (`summary.json` and the epoch rows of `metrics.jsonl`, `result_of`). So
every number printed is a number recorded, and `compare.json` / `compare.md` beside the runs can
be rebuilt from them.

Time to accuracy. An epoch row's `train_seconds` is that epoch's training steps alone: validation
and test evaluation are bookkeeping that a faster evaluator or a rarer schedule would shrink, and
the issue's targets ("90 % test accuracy within 5 s of training") count training. Summed over
the rows, the seconds at the end of the first epoch whose accuracy reaches a threshold are the
seconds to that threshold; the granularity is one epoch. Compare evaluates the test split after
every epoch (`data.test_every_epoch`), because the targets are test accuracies, and reports the
validation crossings too. The test split never steers training: the best checkpoint and early
stopping follow validation accuracy, and the "test" column is the best-validation checkpoint's.

Same budget, each baseline with its own settings. Every model gets the same preset and overrides
(data, epochs, batch, schedule, seed, device). The `kan` baseline, the notes' "original KAN",
also gets its conventional settings (`BASELINE_SETTINGS`: pykan-like layer defaults, one LR of
1e-3 for every group) because the preset's tuned settings (strong base branch, identity-like
start, KAN LR x3) are the very tricks the table measures; with `baseline_settings=False` it trains
with the preset as is. Per-model overrides (`--set-for kan:optim.lr=0.01`) come last.

A regression (a function, a table with a continuous target) has no accuracy to reach: its table
gives each model's best validation RMSE and its test RMSE, MAE and R² (the best-validation
checkpoint, target units), with the training seconds; time to accuracy is a classification's
alone. Without `--models`, a regression compares the flat models (`REGRESSION_MODELS`: a KAN of
`model.width` and the MLP of its size), since the default set's CNNs are for images.

Larger batches (issue 5's GPU path). A GPU is busy only with batches far above the presets' 64;
`scale_batch` raises the batch and scales the learning rate with it (square-root rule by default,
the rule under which Adam's training dynamics stay approximately the same, Malladi et al. 2022),
and records the choice in the config's description, so each run's config.toml says what was done.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from kan_engine import headline, history, models, runs
from kan_engine.config import RunConfig, apply_overrides, parse_value
from kan_engine.errors import ConfigError
from kan_engine.events import EventSink
from kan_engine.run_setup import pick_device
from kan_engine.trainer import Trainer
from kan_engine.untrusted import short_repr

THRESHOLDS = (0.85, 0.90, 0.92, 0.93)
# rapid_kan_lite_mlp: the same CNN front end with an MLP head of the KAN head's size, so the
# table says what the KAN head itself buys
DEFAULT_MODELS = ("cnn", "kan", "rapid_kan_lite", "rapid_kan_lite_mlp")
# a regression's: the flat KAN of model.width and the MLP of its parameter count
REGRESSION_MODELS = ("flat_kan", "flat_mlp")
LrScaling = Literal["sqrt", "linear", "none"]
LR_SCALINGS: tuple[LrScaling, ...] = ("sqrt", "linear", "none")
# exit codes of a training that mean "the user stopped it": compare stops there too
STOPPED_CODES = frozenset({129, 130, 143})

# The notes' "original KAN": pykan-like layer (grid [-1, 1], base branch x1, noise init) trained
# the conventional way (one LR of 1e-3, no per-group multipliers).
BASELINE_SETTINGS: dict[str, dict[str, Any]] = {
    "kan": {
        "kan.grid_range": list(models.ORIGINAL_DEFAULTS["grid_range"]),
        "kan.scale_base": models.ORIGINAL_DEFAULTS["scale_base"],
        "kan.init": models.ORIGINAL_DEFAULTS["init"],
        "optim.lr": 1e-3,
        "optim.lr_mult.cnn": 1.0,
        "optim.lr_mult.kan": 1.0,
        "optim.lr_mult.other": 1.0,
    },
}


# ---------------------------------------------------------------------- configs


def parse_models(text: str, source: str = "--models") -> list[str]:
    """`cnn,kan,rapid_kan_lite` -> names, checked against the registry (order kept, no repeats)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(source, "model.name", "no model given (e.g. cnn,kan,rapid_kan_lite)")
    for name in names:
        if name not in models.MODELS:
            known = ", ".join(models.MODELS)
            reason = f"unknown model {short_repr(name)} (known: {known})"
            raise ConfigError(source, "model.name", reason)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(source, "model.name", f"given twice: {', '.join(repeated)}")
    return names


def default_models(kind: str) -> tuple[str, ...]:
    """The models compared when none are named, for data of task `kind`."""
    return REGRESSION_MODELS if kind == headline.REGRESSION else DEFAULT_MODELS


def parse_model_sets(
    items: Iterable[str], names: Sequence[str], source: str = "--set-for"
) -> dict[str, dict[str, Any]]:
    """`MODEL:SECTION.KEY=VALUE` items -> {model: {dotted key: value}}; values are read as TOML."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        model, colon, assignment = item.partition(":")
        key, equals, text = assignment.partition("=")
        model, key = model.strip(), key.strip()
        if not (colon and equals and model and key):
            raise ConfigError(source, item, "expected MODEL:SECTION.KEY=VALUE (kan:optim.lr=0.01)")
        if model not in names:
            raise ConfigError(
                source, item, f"{model!r} is not compared (models: {', '.join(names)})"
            )
        overrides.setdefault(model, {})[key] = parse_value(text.strip())
    return overrides


def scale_batch(
    config: RunConfig, batch_size: int, rule: LrScaling = "sqrt", source: str = "--batch-size"
) -> RunConfig:
    """The config at `batch_size`, with the LR scaled from the config's own batch by `rule`
    (sqrt: x sqrt(ratio), linear: x ratio, none) and the choice added to its description."""
    if rule not in LR_SCALINGS:
        raise ConfigError(
            source, "optim.lr", f"unknown LR scaling {rule!r} (known: sqrt, linear, none)"
        )
    if batch_size < 1:
        raise ConfigError(source, "train.batch_size", f"must be at least 1 (got {batch_size})")
    base = config.train.batch_size
    if batch_size == base:
        return config
    ratio = batch_size / base
    factor = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[rule]
    lr = config.optim.lr * factor
    note = (
        f"batch {batch_size} (from {base}), lr {lr:.4g} = {config.optim.lr:g} x {factor:.4g} "
        f"({rule} rule)"
    )
    description = f"{config.description}; {note}" if config.description else note
    overrides = {"train.batch_size": batch_size, "optim.lr": lr, "description": description}
    return apply_overrides(config, overrides, source)


def model_configs(
    base: RunConfig,
    names: Sequence[str],
    *,
    batch_size: int | None = None,
    lr_scaling: LrScaling = "sqrt",
    baseline_settings: bool = True,
    per_model: dict[str, dict[str, Any]] | None = None,
) -> dict[str, RunConfig]:
    """One config per model, built in this order: `base` with the model's name and test accuracy
    after every epoch; the baseline's own settings (see the module docstring); `batch_size` with
    the LR scaled (`scale_batch`, so a baseline's own LR is scaled too); the per-model overrides,
    taken as given."""
    configs = {}
    for name in names:
        overrides: dict[str, Any] = {"model.name": name, "data.test_every_epoch": True}
        source = "compare"
        if baseline_settings and name in BASELINE_SETTINGS:
            overrides.update(BASELINE_SETTINGS[name])
            source = f"compare ({name} baseline settings)"
        config = apply_overrides(base, overrides, source)
        if batch_size is not None:
            config = scale_batch(config, batch_size, lr_scaling)
        if per_model and name in per_model:
            config = apply_overrides(config, per_model[name], f"--set-for {name}")
        configs[name] = config
    return configs


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Reach:
    """The first epoch whose accuracy reached a threshold, and the training seconds until then."""

    epoch: int
    seconds: float


@dataclass(frozen=True)
class Result:
    """One model's row of the table, read from its run folder."""

    model: str
    run_dir: str
    status: str
    device: str
    params: int
    epochs_run: int
    train_seconds: float  # training steps alone, all epochs
    seconds: float  # the summary's: training and evaluation
    best_epoch: int
    best_val_acc: float | None  # None for a regression, as in summary.json
    test_acc: float | None  # the best-validation checkpoint on the test split
    to_val: dict[float, Reach | None]  # empty for a regression
    to_test: dict[float, Reach | None]  # empty when the test split was not evaluated per epoch
    task: str = headline.CLASSIFICATION
    # a regression's (None for a classification), target units; test: the best-val checkpoint
    best_val_rmse: float | None = None
    test_rmse: float | None = None
    test_mae: float | None = None
    test_r2: float | None = None


def time_to_accuracy(
    rows: Sequence[dict[str, Any]], key: str, thresholds: Sequence[float] = THRESHOLDS
) -> dict[float, Reach | None]:
    """For each threshold, the first epoch row whose `key` accuracy is at least the threshold,
    with the training seconds summed up to the end of that epoch (None: never reached).

    Rows without `train_seconds` (runs recorded before it existed) count their `seconds`, which
    include evaluation."""
    reached: dict[float, Reach | None] = dict.fromkeys(thresholds)
    elapsed = 0.0
    for row in rows:
        elapsed += _train_seconds(row)
        acc = row.get(key)
        if acc is None:
            continue
        for threshold in thresholds:
            if reached[threshold] is None and float(acc) >= threshold:
                reached[threshold] = Reach(int(row["epoch"]), elapsed)
    return reached


def _train_seconds(row: dict[str, Any]) -> float:
    """An epoch row's training seconds (its `seconds` for runs recorded before they existed)."""
    seconds = row.get("train_seconds")
    return float(row["seconds"] if seconds is None else seconds)


# the summary.json keys of a regression's row (`Result`)
REGRESSION_KEYS = ("best_val_rmse", "test_rmse", "test_mae", "test_r2")


def result_of(run_dir: Path, thresholds: Sequence[float] = THRESHOLDS) -> Result:
    """The table row of one run folder, from its summary.json and metrics.jsonl."""
    summary = runs.read_summary(run_dir)
    rows = history.epoch_rows(run_dir)
    task = headline.kind_of(summary)
    accuracy = task == headline.CLASSIFICATION
    tested = accuracy and any(r.get("test_acc") is not None for r in rows)
    fit = {key: summary.get(key) for key in REGRESSION_KEYS} if not accuracy else {}
    train_seconds = sum(_train_seconds(r) for r in rows)
    params = summary.get("params") or {}
    return Result(
        model=str(summary.get("model")),
        run_dir=str(run_dir),
        status=str(summary.get("status")),
        device=str(summary.get("device")),
        params=int(params.get("total", 0)),
        epochs_run=int(summary.get("epochs_run") or 0),
        train_seconds=train_seconds,
        seconds=float(summary.get("seconds") or 0.0),
        best_epoch=int(summary.get("best_epoch") or 0),
        best_val_acc=summary.get("best_val_acc"),
        test_acc=summary.get("test_acc"),
        to_val=time_to_accuracy(rows, "val_acc", thresholds) if accuracy else {},
        to_test=time_to_accuracy(rows, "test_acc", thresholds) if tested else {},
        task=task,
        **fit,
    )


# ---------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Everything a comparison produced; `exit_code` is the worst of its runs' (0 if all good)."""

    folder: Path
    preset: str
    thresholds: tuple[float, ...]
    results: list[Result] = field(default_factory=list)
    exit_code: int = 0
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        """Every model fit a regression (one data set: all or none do), so the table is the
        fit table, not time to accuracy."""
        return bool(self.results) and all(r.task == headline.REGRESSION for r in self.results)


def run_models(
    configs: dict[str, RunConfig],
    *,
    out_dir: Path,
    preset_name: str,
    make_sink: Callable[[], EventSink],
    train: Callable[[Trainer], int],
    thresholds: Sequence[float] = THRESHOLDS,
    command: str = "",
) -> Comparison:
    """Train the models one after the other, each into `<group>/<model>/<run folder>`, and
    rewrite `compare.json` and `compare.md` in the group folder after each one.

    `train` runs one trainer and returns its exit code (the CLI's headless loop: signals, the
    exit codes of `kan-tui run`); a failed or diverged model does not stop the others, a stopped
    one (Ctrl-C, SIGTERM, SIGHUP) does. KanError (bad config, missing data) propagates.
    """
    first = next(iter(configs.values()))
    environment = {**describe_environment(first.train.device), "command": command}
    folder = runs.create_run_dir(Path(out_dir), f"compare-{preset_name}")
    (folder / runs.CHECKPOINTS).rmdir()  # a run folder's name, but it holds runs, not weights
    comparison = Comparison(folder, preset_name, tuple(thresholds), environment=environment)
    for name, config in configs.items():
        trainer = Trainer(config, sink=make_sink(), out_dir=folder / name, preset_name=preset_name)
        code = train(trainer)
        if (trainer.run_dir / runs.SUMMARY).exists():  # absent only if it could not be written
            comparison.results.append(result_of(trainer.run_dir, thresholds))
        comparison.exit_code = max(comparison.exit_code, code)
        write_outputs(comparison)
        if code in STOPPED_CODES:
            break
    return comparison


def describe_environment(device: str) -> dict[str, Any]:
    """What a benchmark record needs besides the numbers: device, torch, commit, time."""
    resolved = pick_device(device)
    name = str(resolved)
    if resolved.type == "cuda":
        name = f"{resolved} ({torch.cuda.get_device_name(resolved)})"
    elif resolved.type == "cpu":
        name = f"cpu ({torch.get_num_threads()} threads)"
    return {
        "device": name,
        "torch": torch.__version__,
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _commit() -> str | None:
    """HEAD of the checkout this package runs from, when it is one (None otherwise)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def write_outputs(comparison: Comparison, json_path: Path | None = None) -> None:
    """`compare.json` and `compare.md` in the group folder (and the JSON at `json_path` too)."""
    text = runs.dumps(to_json(comparison)) + "\n"
    runs.write_file(comparison.folder / "compare.json", text)
    runs.write_file(comparison.folder / "compare.md", markdown(comparison) + "\n")
    if json_path is not None:
        runs.write_file(json_path, text)


def to_json(comparison: Comparison) -> dict[str, Any]:
    """Plain data: thresholds as percent strings ("90"), reaches as {epoch, seconds} or null."""

    def reaches(table: dict[float, Reach | None]) -> dict[str, dict[str, Any] | None]:
        return {_pct(t): None if r is None else asdict(r) for t, r in table.items()}

    models_out = []
    for result in comparison.results:
        row = asdict(result)
        row["to_val"], row["to_test"] = reaches(result.to_val), reaches(result.to_test)
        models_out.append(row)
    return {
        "folder": str(comparison.folder),
        "preset": comparison.preset,
        "thresholds": [_pct(t) for t in comparison.thresholds],
        "environment": comparison.environment,
        "exit_code": comparison.exit_code,
        "models": models_out,
    }


# ---------------------------------------------------------------------- the table


DASH = "—"


def _pct(threshold: float) -> str:
    return f"{threshold * 100:g}"


def _params(n: int) -> str:
    """1.23 M, 45.6 k; a count below a thousand (a function fit's flat KAN) as it is."""
    if n < 1e3:
        return str(n)
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k"


def _reach(reach: Reach | None) -> str:
    return DASH if reach is None else f"{reach.epoch} ({reach.seconds:.1f} s)"


def _acc(value: float | None) -> str:
    return DASH if value is None else f"{value:.2%}"


def _sig(value: float | None) -> str:
    """A regression metric in four significant digits (an RMSE runs from 1e-1 to 1e-6)."""
    return DASH if value is None else f"{value:.4g}"


def table_rows(comparison: Comparison, split: Literal["test", "val"]) -> list[list[str]]:
    """Header and rows: model, params, epoch (training seconds) at which `split` accuracy first
    reached each threshold, best val, test, training seconds, status."""
    header = [
        "model",
        "params",
        *(f"{_pct(t)} %" for t in comparison.thresholds),
        "best val",
        "test",
        "train s",
        "status",
    ]
    rows = [header]
    for r in comparison.results:
        reached = r.to_test if split == "test" else r.to_val
        rows.append(
            [
                r.model,
                _params(r.params),
                *(_reach(reached.get(t)) for t in comparison.thresholds),
                _acc(r.best_val_acc),
                _acc(r.test_acc),
                f"{r.train_seconds:.1f}",
                r.status,
            ]
        )
    return rows


def fit_rows(comparison: Comparison) -> list[list[str]]:
    """A regression's header and rows: model, params, best val RMSE, the best-val checkpoint's
    test RMSE, MAE and R², training seconds, status."""
    scored = ["best val rmse", "test rmse", "test mae", "test r²"]
    rows = [["model", "params", *scored, "train s", "status"]]
    for r in comparison.results:
        scores = (r.best_val_rmse, r.test_rmse, r.test_mae, r.test_r2)
        rows.append(
            [r.model, _params(r.params), *map(_sig, scores), f"{r.train_seconds:.1f}", r.status]
        )
    return rows


SPLIT_CAPTIONS = {
    "test": "to test accuracy (evaluated after every epoch)",
    "val": "to validation accuracy",
}


def markdown(comparison: Comparison) -> str:
    """The notes' comparison table as Markdown (pastes into BENCHMARKS.md): on test accuracy
    when it was evaluated every epoch, then on validation accuracy; a regression's fit table."""
    env = comparison.environment
    commit = (env.get("commit") or "?")[:12]
    where = f"preset {comparison.preset}, device {env.get('device', '?')}, commit {commit}"
    if comparison.regression:
        notes = (
            "rmse, mae: the target's units; test: the best-val checkpoint (time to accuracy: "
            "classification only)"
        )
        lines = [f"regression fit: {where}", notes, "", *_markdown_table(fit_rows(comparison))]
        return "\n".join(lines)
    lines = [
        f"time to accuracy: {where}",
        f"cells: the epoch at which the accuracy was first reached (training seconds until then, "
        f"evaluation not counted); {DASH}: not reached; test: the best-val checkpoint",
    ]
    splits: list[Literal["test", "val"]] = ["val"]
    if any(r.to_test for r in comparison.results):
        splits.insert(0, "test")
    for split in splits:
        lines += ["", f"{SPLIT_CAPTIONS[split]}:", ""]
        lines += _markdown_table(table_rows(comparison, split))
    return "\n".join(lines)


def _markdown_table(rows: list[list[str]]) -> list[str]:
    """Header and rows as the lines of a Markdown table, columns padded to one width."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if number == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    return lines

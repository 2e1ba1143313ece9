"""`kan-tui compare`, `lr-find`, `inspect` and `models`: the tools beside training."""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import typer

from kan_engine.config import RunConfig, parse_value
from kan_engine.errors import ConfigError, KanError
from kan_engine.untrusted import printable
from kan_tui import exit_codes
from kan_tui.cli.base import (
    CHECKPOINT,
    DEBUG,
    OUT,
    PRESET,
    RUN_DIR,
    SETS,
    app,
    check_out,
    command,
    config_option,
    console,
    load_preset,
    path_value,
    pick_checkpoint,
    read_data,
    reporter,
)
from kan_tui.plotting import text_chart

# `kan-tui run` options that `compare` passes on to every model (the rest go through --set)
COMPARE_OPTIONS = (
    "dataset", "data_dir", "epochs", "warmup_epochs", "device", "seed", "mixed_precision", "compile"
)  # fmt: skip
LR_FIND_OPTIONS = ("model", "dataset", "data_dir", "batch_size", "device")
# the KAN layer settings `models` builds every model with (the schema's defaults)
_LAYER_KEYS = ("grid_size", "spline_order", "grid_range", "scale_base", "scale_spline", "init")
SET_FOR = typer.Option(
    [],
    "--set-for",
    metavar="MODEL:SECTION.KEY=VALUE",
    help="override a field for one model, after everything else (repeatable)",
)
JSON_OUT = typer.Option(
    None, "--json", metavar="FILE", help="also write the results as JSON here", parser=path_value
)


@command(app)
def models(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """List the models and their parameter counts.

    The counts are for 1x28x28 inputs and 10 classes, with the schema's KAN layer settings.
    """
    import torch
    from rich.table import Table

    from kan_engine.config import KanSection
    from kan_engine.models import MODELS, build, count_params

    kan = KanSection().model_dump()
    options = {key: kan[key] for key in _LAYER_KEYS}
    table = Table("model", "parameters", "description", box=None, pad_edge=False)
    for name, description in MODELS.items():
        # on the meta device: counts without allocating (rapid_kan_power alone is ~0.2 GB)
        with torch.device("meta"):
            params = count_params(build(name, (1, 28, 28), 10, **options))["total"]
        table.add_row(name, f"{params:,}", description)
    console().print(table)


@command(app)
def datasets(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """List the data sets and the named functions."""
    from rich.table import Table

    from kan_engine import function_data, names

    table = Table("data set", "description", box=None, pad_edge=False)
    for name, description in names.DATASETS.items():
        table.add_row(name, description)
    console().print(table)
    functions = Table("function (data.function)", "description", box=None, pad_edge=False)
    for name, description in function_data.describe_named():
        functions.add_row(name, description)
    console().print(functions)


@command(app, config=COMPARE_OPTIONS)
def compare(
    ctx: typer.Context,
    preset: str = typer.Option(
        "lite", "--preset", "-p", metavar="NAME|FILE", help="preset every model trains with"
    ),
    model_names: str | None = typer.Option(
        None,
        "--models",
        metavar="A,B,...",
        help="models to compare (default: the cnn and kan baselines, rapid_kan_lite and its MLP "
        "control; a regression: flat_kan and flat_mlp)",
    ),
    batch_size: str | None = config_option(
        "batch_size",
        help="samples per step; the LR is scaled from the preset's batch (--lr-scaling)",
    ),
    lr_scaling: Literal["sqrt", "linear", "none"] = typer.Option(
        "sqrt",
        "--lr-scaling",
        metavar="sqrt|linear|none",
        help="LR rule for --batch-size: x sqrt(ratio), x ratio, or as is",
    ),
    sets: list[str] = SETS,
    set_for: list[str] = SET_FOR,
    baseline_settings: bool = typer.Option(
        True,
        "--baseline-settings/--same-settings",
        help="kan baseline: its conventional settings (lr 1e-3, pykan-like layer), or the preset's",
    ),
    json_out: Path | None = JSON_OUT,
    out: Path = OUT,
    debug: bool = DEBUG,
    **named: Any,
) -> None:
    """Train several models alike and compare them.

    Time to accuracy for a classification, the fit (RMSE, MAE, R²) for a regression.

    The models train one after the other, on the same data and budget. The table gives epochs
    and training seconds to 85/90/92/93 % (test accuracy, evaluated every epoch, and validation
    accuracy), best val, test, seconds; a regression's gives best val RMSE, test RMSE, MAE and
    R², seconds. Each model gets its own run folder under OUT/<stamp>-compare-<preset>/, beside
    compare.json and compare.md.
    """
    from kan_engine import compare as comparing
    from kan_engine import distributed
    from kan_tui import headless, options

    if distributed.launched():
        raise ConfigError("torchrun", "compare", "trains one model after another: run it alone")
    names = comparing.parse_models(model_names) if model_names is not None else None
    preset_config, preset_name, source = load_preset(preset)
    config = options.resolve(preset_config, source, sets, named)
    if names is None:  # the defaults follow the data: a regression compares the flat models
        names = list(comparing.default_models(read_data(config).task))
    per_model = comparing.parse_model_sets(set_for, names)
    configs = comparing.model_configs(
        config,
        names,
        batch_size=None if batch_size is None else _whole(batch_size, "--batch-size"),
        lr_scaling=lr_scaling,
        baseline_settings=baseline_settings,
        per_model=per_model,
    )
    check_out(out)
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        raise ConfigError("--json", "", f"{json_out}: not a file in an existing folder")
    for checked in {_data_key(c): c for c in configs.values()}.values():
        read_data(checked)  # bad data: exit 2 before the comparison's folder is made
    result = comparing.run_models(
        configs,
        out_dir=out,
        preset_name=preset_name,
        make_sink=reporter,
        train=functools.partial(headless.train, debug=debug),
        command=shlex.join(["kan-tui", *sys.argv[1:]]),
    )
    comparing.write_outputs(result, json_out)
    typer.echo("\n" + comparing.markdown(result) + "\n")
    typer.echo(f"runs and compare.json / compare.md in {result.folder}")
    raise typer.Exit(result.exit_code)


@command(app, "lr-find", config=LR_FIND_OPTIONS)
def lr_find(
    ctx: typer.Context,
    preset: str = PRESET,
    steps: int = typer.Option(200, "--steps", min=5, metavar="INT", help="steps of the sweep"),
    start: float = typer.Option(
        1e-7, "--start", min=0.0, metavar="FLOAT", help="first learning rate"
    ),
    end: float = typer.Option(10.0, "--end", min=0.0, metavar="FLOAT", help="last learning rate"),
    sets: list[str] = SETS,
    debug: bool = DEBUG,
    **named: Any,
) -> None:
    """Learning-rate range test: suggest a base LR (no run folder).

    It trains a few hundred steps while the LR grows exponentially, plots the smoothed loss and
    suggests a base LR (optim.lr): a tenth of the LR at the lowest loss. The per-group
    multipliers apply as in training.
    """
    from kan_engine.lr_find import find_lr
    from kan_tui import options

    if not 0 < start < end:
        raise ConfigError("--start/--end", "", f"need 0 < start < end (got {start:g}, {end:g})")
    preset_config, _, source = load_preset(preset)
    config = options.resolve(preset_config, source, sets, named)
    raw = read_data(config)
    for warning in raw.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    result = find_lr(
        config, steps=steps, start=start, end=end, raw=raw,
        notice=lambda text: print(f"note: {text}", file=sys.stderr),
    )  # fmt: skip
    del raw
    marks = [(result.suggestion, "suggested")] if result.suggestion else []
    chart = text_chart(
        {"smoothed loss": list(zip(result.lrs, result.smoothed, strict=True))},
        title=f"LR range test: {config.model.name} on {config.data.dataset}",
        xlabel="base learning rate (log)",
        log_x=True,
        marks=marks,
    )
    typer.echo(chart)
    typer.echo(f"{len(result.lrs)} steps, stopped: {result.stop_reason}")
    if result.best_lr is not None:
        typer.echo(f"lowest loss at lr {result.best_lr:.3g} (an upper bound, not a choice)")
    if result.suggestion is None:
        typer.echo("suggested lr: none (the loss never fell: try a wider --start/--end)")
        raise typer.Exit(exit_codes.FAILED)
    typer.echo(f"suggested lr: {result.suggestion:.3g}")


@command(app)
def inspect(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    layer: str = typer.Option(
        "0", "--layer", "-l", metavar="LAYER", help="KAN layer: position (0, -1) or path"
    ),
    edge: tuple[int, int] | None = typer.Option(
        None, "--edge", "-e", metavar="I J", help="plot phi(x) of the edge input I -> output J"
    ),
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    top: int = typer.Option(10, "--top", min=1, metavar="INT", help="edges listed in the overview"),
    debug: bool = DEBUG,
) -> None:
    """Show what a KAN layer learned: edge curves and edge ranking.

    An edge's function phi(x) is plotted over its grid (knots marked), and the layer's edges are
    ranked by importance (mean |phi|).
    """
    from rich.table import Table

    from kan_engine import activations

    checkpoint = pick_checkpoint(run_dir, checkpoint)
    layers, epoch = activations.load_layers(run_dir, checkpoint)
    name, kan = activations.pick_layer(layers, layer)
    # a bad --edge is refused before anything is printed: the error is the whole output
    curve = activations.edge_curve(kan, *edge) if edge is not None else None
    stdout = console()
    stdout.print(
        f"{printable(run_dir)}: {checkpoint} checkpoint (epoch {epoch}); layer {name}: "
        f"{kan.in_features} inputs -> {kan.out_features} outputs, {kan.grid_size} grid "
        f"intervals, order {kan.spline_order}",
        markup=False,
        highlight=False,
    )
    try:
        recorded = activations.outside_share(run_dir, name, epoch)
    except KanError as exc:  # a damaged log costs this line only: the checkpoint is fine
        note = f"warning: {printable(exc)}; the share of inputs outside the grid is not shown"
        print(note, file=sys.stderr)
        recorded = None
    if recorded is not None:
        share, at = recorded
        stdout.print(f"inputs outside the grid: {share:.1%} (last training batch of epoch {at})")
    if edge is not None and curve is not None:
        i, j = edge
        low, high = activations.grid_range(kan, i)
        chart = text_chart(
            {f"phi {i}->{j}": list(zip(curve.x, curve.y, strict=True))},
            title=f"{name}: edge {i} -> {j} on [{low:.3g}, {high:.3g}] (| = grid knots)",
            xlabel=f"input {i}",
            marks=[(knot, "") for knot in curve.knots],
        )
        typer.echo(chart)
    ranked = activations.rank_edges(activations.edge_importance(kan), top)
    table = Table("rank", "edge (in -> out)", "mean |phi|", box=None, pad_edge=False)
    for rank, (i, j, score) in enumerate(ranked, 1):
        table.add_row(str(rank), f"{i} -> {j}", f"{score:.4g}")
    stdout.print(f"top {len(ranked)} edges of {name}, over {activations.UNIFORM}:")
    stdout.print(table)


def _whole(text: str, option: str) -> int:
    """A whole number from an option's text, or the one-line error naming the option."""
    value = parse_value(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(option, "train.batch_size", f"must be a whole number (got {text!r})")
    return value


def _data_key(config: RunConfig) -> tuple[Any, ...]:
    """What decides which data `data.read` reads (augmentation does not)."""
    section = config.data
    return (section.dataset, section.data_dir, section.target, section.val_fraction)

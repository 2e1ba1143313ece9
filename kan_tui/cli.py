"""The `kan-tui` command: the entry point only.

Importing this module stays light (Typer and the pydantic config schema) so that `--help` and
`--version` are instant: torch, the trainer and the Rich reporter are imported inside the commands
that train, and textual only where the TUI opens, so `run --headless` on a server never needs it.

Errors the user can fix (KanError: a bad preset or option, missing data, an incomplete run folder)
print one line, `error: <source>: <key>: <reason>`, and exit 2; `--debug` adds the traceback.
Exit codes: 0 finished or early-stopped, 1 diverged or failed, 2 bad usage / config / data,
130 stopped by Ctrl-C (129 SIGHUP, 143 SIGTERM) after writing `last.pt`.
"""

from __future__ import annotations

import functools
import math
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import typer

from kan_engine.config import RunConfig, parse_value
from kan_engine.errors import ConfigError, KanError
from kan_engine.untrusted import printable
from kan_tui.options import OPTION_KEYS, describe, flags

if TYPE_CHECKING:
    from rich.console import Console

    from kan_engine.datasets import Raw
    from kan_engine.trainer import Trainer
    from kan_tui.headless import HeadlessReporter

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="kan-tui",
    help="Train Kolmogorov-Arnold Networks fast: a terminal UI (no command) or headless runs.",
    invoke_without_command=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)
presets_app = typer.Typer(help="List, show, save and delete presets.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
runs_app = typer.Typer(help="List past runs and export their metrics.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

F = TypeVar("F", bound=Callable[..., Any])

DEBUG = typer.Option(False, "--debug", help="show the traceback of errors")
NO_MOUSE = typer.Option(False, "--no-mouse", help="TUI: leave the mouse to the terminal")
OUT = typer.Option(Path("runs"), "--out", help="folder that gets one sub-folder per run")
SETS = typer.Option(
    [], "--set", metavar="SECTION.KEY=VALUE", help="override any preset field (repeatable)"
)
RUN_DIR = typer.Argument(..., help="a run folder (holding config.toml and checkpoints/)")
PRESET = typer.Option(
    "lite", "--preset", "-p", metavar="NAME|FILE", help="preset name, or a .toml file"
)
HEADLESS = typer.Option(False, "--headless", help="train here, without the TUI")

# the metavar of each named config option (OPTION_KEYS); `compile` is a --compile/--no-compile flag
METAVARS = {
    "model": "NAME", "dataset": "NAME", "data_dir": "PATH", "target": "COLUMN", "epochs": "INT",
    "batch_size": "INT", "lr": "FLOAT", "weight_decay": "FLOAT", "optimizer": "NAME",
    "scheduler": "NAME", "warmup_epochs": "FLOAT", "patience": "INT", "clip_grad_norm": "FLOAT",
    "prob_update_grid": "FLOAT", "mixed_precision": "MODE", "device": "DEVICE", "seed": "INT",
}  # fmt: skip


def _config_option(name: str) -> Any:
    """A named config option: its flags, metavar and help all come from the schema key it sets."""
    help_text = describe(OPTION_KEYS[name])
    if name == "compile":
        return typer.Option(None, "--compile/--no-compile", help=help_text)
    return typer.Option(None, *flags(name), metavar=METAVARS[name], help=help_text)


def _load_preset(ref: str) -> tuple[RunConfig, str, str]:
    """The preset's config, its name, and the source that errors about its values name."""
    from kan_engine import presets_io

    config, name = presets_io.resolve(ref)
    return config, name, ref if presets_io.is_path_like(ref) else f"preset {ref}"


def _user_errors(command: F) -> F:
    """One line on stderr and exit 2 for errors the user can fix; 130 on Ctrl-C outside training."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        ctx: typer.Context = kwargs["ctx"]
        debug = kwargs.get("debug") or ctx.find_root().params.get("debug", False)
        try:
            return command(**kwargs)
        except KanError as exc:
            if debug:
                traceback.print_exc()
            print(f"error: {printable(exc)}", file=sys.stderr)  # it may quote user text
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"kan-tui {version('kan-tui')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
    debug: bool = DEBUG,
    no_mouse: bool = NO_MOUSE,
) -> None:
    """Without a command, open the terminal UI."""
    if ctx.invoked_subcommand is None:
        raise typer.Exit(_open_tui(mouse=not no_mouse))


def _open_tui(*, mouse: bool, **app_options: Any) -> int:
    """Run the TUI (the one app factory, shared with the tests); returns its exit code."""
    from kan_tui.app import create_app

    tui = create_app(**app_options)
    tui.run(mouse=mouse)
    return tui.return_code or 0


@app.command()
@_user_errors
def run(
    ctx: typer.Context,
    preset: str = PRESET,
    headless: bool = HEADLESS,
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as TOML and exit (no training)"
    ),
    model: str | None = _config_option("model"),
    dataset: str | None = _config_option("dataset"),
    data_dir: str | None = _config_option("data_dir"),
    target: str | None = _config_option("target"),
    epochs: str | None = _config_option("epochs"),
    batch_size: str | None = _config_option("batch_size"),
    lr: str | None = _config_option("lr"),
    weight_decay: str | None = _config_option("weight_decay"),
    optimizer: str | None = _config_option("optimizer"),
    scheduler: str | None = _config_option("scheduler"),
    warmup_epochs: str | None = _config_option("warmup_epochs"),
    patience: str | None = _config_option("patience"),
    clip_grad_norm: str | None = _config_option("clip_grad_norm"),
    prob_update_grid: str | None = _config_option("prob_update_grid"),
    mixed_precision: str | None = _config_option("mixed_precision"),
    device: str | None = _config_option("device"),
    seed: str | None = _config_option("seed"),
    compile: bool | None = _config_option("compile"),
    sets: list[str] = SETS,
    out: Path = OUT,
    no_mouse: bool = NO_MOUSE,
    debug: bool = DEBUG,
) -> None:
    """Train from a preset; options override it (preset < --set < named options).

    Values are validated by the config schema, like preset values, so a bad one is reported with
    the option it came from. Without --headless the TUI opens on the dashboard and starts the run.
    """
    from kan_engine import presets_io
    from kan_tui import options

    preset_config, preset_name, source = _load_preset(preset)
    named = {name: ctx.params[name] for name in OPTION_KEYS}
    auto_batch = named["batch_size"] == "auto"
    if auto_batch:
        named["batch_size"] = None
    config = options.resolve(preset_config, source, sets, named)
    config, preset_name = _label_by_model(config, preset_config, preset_name)
    if auto_batch:
        config = _auto_batch_size(config)
    if print_config:
        typer.echo(presets_io.render(config), nl=False)
        return
    _check_out(out)
    from kan_engine import distributed

    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        # the TUI needs a terminal: in a pipe or a file it would write escape codes and wait for
        # keys that never come
        print("note: not a terminal: training headless (add --headless to say so)", file=sys.stderr)
        headless = True
    if not headless:
        if distributed.launched():
            raise ConfigError("torchrun", "--headless", "the TUI is one process: add --headless")
        _read_data(config)  # bad data: one error line here, not a failed run in the TUI
        tui_options = {"config": config, "preset_name": preset_name, "start": True, "out_dir": out}
        raise typer.Exit(_open_tui(mouse=not no_mouse, **tui_options))
    from kan_engine.trainer import Trainer

    with distributed.launch(config.train.device) as dist:
        reporter = _reporter()
        raw = _read_data(config)  # before the run folder is made: bad data leaves none
        trainer = Trainer(config, sink=reporter, out_dir=out, preset_name=preset_name, raw=raw)
        del raw  # the trainer drops it once on the device
        _finish(trainer, reporter, debug, quiet=not dist.is_main)


@app.command()
@_user_errors
def resume(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        min=1,
        metavar="INT",
        help="train to this many epochs in all: extends a finished, early-stopped or stopped run "
        "(the cosine / one-cycle LR then follows the longer schedule from here on)",
    ),
    config_from_checkpoint: bool = typer.Option(
        False,
        "--config-from-checkpoint",
        help="rewrite config.toml from checkpoints/last.pt (the config the run trained with), "
        "after it was damaged or edited",
    ),
    headless: bool = HEADLESS,
    debug: bool = DEBUG,
) -> None:
    """Continue a stopped or crashed run from its last checkpoint, in the same folder (under
    torchrun too, with any number of processes: the data order is that of the global batches).
    A finished or early-stopped run is left as it is (exit 0) unless --epochs extends it."""
    import os

    from kan_engine import distributed, resume_plan
    from kan_engine.trainer import Trainer

    plan = resume_plan.read(run_dir, epochs=epochs, config_from_checkpoint=config_from_checkpoint)
    if plan.done:  # over: exit 0, as a run that ends finished or early-stopped does
        if plan.write_config:
            resume_plan.restore_config(plan)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it for all
            typer.echo(plan.message)
        return
    with distributed.launch(plan.config.train.device) as dist:
        if not headless and dist.is_main:
            print("note: the TUI cannot resume a run yet; resuming here", file=sys.stderr)
        reporter = _reporter()
        trainer = Trainer.from_run_dir(run_dir, sink=reporter, plan=plan)
        _finish(trainer, reporter, debug, quiet=not dist.is_main)


@app.command("eval")
@_user_errors
def evaluate(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    split: Literal["test", "val"] = typer.Option("test", "--split", help="split to evaluate"),
    checkpoint: Literal["best", "last"] = typer.Option("best", "--checkpoint"),
    debug: bool = DEBUG,
) -> None:
    """Evaluate a run's checkpoint and print its accuracy and loss."""
    from kan_engine.run_setup import evaluate as evaluate_run

    result = evaluate_run(run_dir, split=split, checkpoint=checkpoint)
    typer.echo(
        f"{split} accuracy {result['acc']:.4f}  loss {result['loss']:.4f}  "
        f"({result['n']} samples, {checkpoint} checkpoint of {printable(run_dir)})"
    )


@app.command()
@_user_errors
def models(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """List the models, with parameter counts for 1x28x28 inputs and 10 classes."""
    import torch
    from rich.table import Table

    from kan_engine.config import KanSection
    from kan_engine.models import MODELS, build, count_params

    kan = KanSection().model_dump()
    table = Table("model", "parameters", "description", box=None, pad_edge=False)
    for name, description in MODELS.items():
        # on the meta device: counts without allocating (rapid_kan_power alone is ~0.2 GB)
        with torch.device("meta"):
            params = count_params(build(name, (1, 28, 28), 10, **_model_options(kan)))["total"]
        table.add_row(name, f"{params:,}", description)
    _console().print(table)


# `kan-tui run` options that `compare` passes on to every model (the rest go through --set)
COMPARE_OPTIONS = (
    "dataset", "data_dir", "epochs", "warmup_epochs", "device", "seed", "mixed_precision", "compile"
)  # fmt: skip
SET_FOR = typer.Option(
    [],
    "--set-for",
    metavar="MODEL:SECTION.KEY=VALUE",
    help="override a field for one model, after everything else (repeatable)",
)
JSON_OUT = typer.Option(None, "--json", metavar="FILE", help="also write the results as JSON here")


@app.command()
@_user_errors
def compare(
    ctx: typer.Context,
    preset: str = typer.Option(
        "lite", "--preset", "-p", metavar="NAME|FILE", help="preset every model trains with"
    ),
    model_names: str | None = typer.Option(
        None,
        "--models",
        metavar="A,B,...",
        help="models to compare (default: the cnn and kan baselines and rapid_kan_lite)",
    ),
    dataset: str | None = _config_option("dataset"),
    data_dir: str | None = _config_option("data_dir"),
    epochs: str | None = _config_option("epochs"),
    warmup_epochs: str | None = _config_option("warmup_epochs"),
    batch_size: str | None = typer.Option(
        None,
        *flags("batch_size"),
        metavar="INT",
        help="samples per step; the LR is scaled from the preset's batch (--lr-scaling)",
    ),
    lr_scaling: Literal["sqrt", "linear", "none"] = typer.Option(
        "sqrt", "--lr-scaling", help="LR rule for --batch-size: x sqrt(ratio), x ratio, or as is"
    ),
    mixed_precision: str | None = _config_option("mixed_precision"),
    device: str | None = _config_option("device"),
    seed: str | None = _config_option("seed"),
    compile: bool | None = _config_option("compile"),
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
) -> None:
    """Train several models on the same data and budget, one after the other, and print the
    time-to-accuracy table: epochs and training seconds to 85/90/92/93 % (test accuracy,
    evaluated every epoch, and validation accuracy), best val, test, seconds. Each model gets its
    own run folder under OUT/<stamp>-compare-<preset>/, beside compare.json and compare.md."""
    from kan_engine import compare as comparing
    from kan_engine import distributed
    from kan_tui import headless, options

    if distributed.launched():
        raise ConfigError("torchrun", "compare", "trains one model after another: run it alone")
    names = comparing.parse_models(model_names or ",".join(comparing.DEFAULT_MODELS))
    per_model = comparing.parse_model_sets(set_for, names)
    preset_config, preset_name, source = _load_preset(preset)
    named = {name: ctx.params[name] for name in COMPARE_OPTIONS}
    config = options.resolve(preset_config, source, sets, named)
    configs = comparing.model_configs(
        config,
        names,
        batch_size=None if batch_size is None else _whole(batch_size, "--batch-size"),
        lr_scaling=lr_scaling,
        baseline_settings=baseline_settings,
        per_model=per_model,
    )
    _check_out(out)
    if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
        raise ConfigError("--json", "", f"{json_out}: not a file in an existing folder")
    for checked in {_data_key(c): c for c in configs.values()}.values():
        _read_data(checked)  # bad data: exit 2 before the comparison's folder is made
    result = comparing.run_models(
        configs,
        out_dir=out,
        preset_name=preset_name,
        make_sink=_reporter,
        train=functools.partial(headless.train, debug=debug),
        command=shlex.join(["kan-tui", *sys.argv[1:]]),
    )
    comparing.write_outputs(result, json_out)
    typer.echo("\n" + comparing.markdown(result) + "\n")
    typer.echo(f"runs and compare.json / compare.md in {result.folder}")
    raise typer.Exit(result.exit_code)


def _auto_batch_size(config: RunConfig) -> RunConfig:
    """`--batch-size auto`: the largest power of two whose training step fits the device."""
    from kan_engine import distributed, memory
    from kan_engine.config import apply_overrides
    from kan_engine.run_setup import pick_device

    if distributed.launched():
        reason = "is picked per process and could differ between ranks: give a number"
        raise ConfigError("--batch-size", "auto", reason)
    device = pick_device(config.train.device)
    est = memory.estimate(config)
    available = memory.available_bytes(device)
    batch = memory.auto_batch_size(est, available)
    print(
        f"batch size auto: {batch} ({est.describe(batch, str(device))}; "
        f"{memory.format_bytes(available)} available, {memory.MARGIN:.0%} kept free)",
        file=sys.stderr,
    )
    return apply_overrides(config, {"train.batch_size": batch}, "--batch-size auto")


def _whole(text: str, option: str) -> int:
    """A whole number from an option's text, or the one-line error naming the option."""
    value = parse_value(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(option, "train.batch_size", f"must be a whole number (got {text!r})")
    return value


def _model_options(kan: dict[str, Any]) -> dict[str, Any]:
    keys = ("grid_size", "spline_order", "grid_range", "scale_base", "scale_spline", "init")
    return {key: kan[key] for key in keys}


@app.command("lr-find")
@_user_errors
def lr_find(
    ctx: typer.Context,
    preset: str = PRESET,
    model: str | None = _config_option("model"),
    dataset: str | None = _config_option("dataset"),
    data_dir: str | None = _config_option("data_dir"),
    batch_size: str | None = _config_option("batch_size"),
    device: str | None = _config_option("device"),
    steps: int = typer.Option(200, "--steps", min=5, help="steps of the sweep"),
    start: float = typer.Option(1e-7, "--start", min=0.0, help="first learning rate"),
    end: float = typer.Option(10.0, "--end", min=0.0, help="last learning rate"),
    sets: list[str] = SETS,
    debug: bool = DEBUG,
) -> None:
    """Learning-rate range test: train a few hundred steps while the LR grows exponentially,
    plot the smoothed loss and suggest a base LR (optim.lr): a tenth of the LR at the lowest
    loss. The per-group multipliers apply as in training; no run folder is written."""
    from kan_engine.lr_find import find_lr
    from kan_tui import options

    if not 0 < start < end:
        raise ConfigError("--start/--end", "", f"need 0 < start < end (got {start:g}, {end:g})")
    preset_config, _, source = _load_preset(preset)
    keys = ("model", "dataset", "data_dir", "batch_size", "device")
    config = options.resolve(preset_config, source, sets, {k: ctx.params[k] for k in keys})
    raw = _read_data(config)
    for warning in raw.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    result = find_lr(config, steps=steps, start=start, end=end, raw=raw)
    del raw
    marks = [(result.suggestion, "suggested")] if result.suggestion else []
    typer.echo(
        _text_plot(
            {"smoothed loss": (result.lrs, result.smoothed)},
            title=f"LR range test: {config.model.name} on {config.data.dataset}",
            xlabel="base learning rate (log)",
            log_x=True,
            marks=marks,
        )
    )
    typer.echo(f"{len(result.lrs)} steps, stopped: {result.stop_reason}")
    if result.best_lr is not None:
        typer.echo(f"lowest loss at lr {result.best_lr:.3g} (an upper bound, not a choice)")
    if result.suggestion is None:
        typer.echo("suggested lr: none (the loss never fell: try a wider --start/--end)")
        raise typer.Exit(1)
    typer.echo(f"suggested lr: {result.suggestion:.3g}")


@app.command()
@_user_errors
def inspect(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    layer: str = typer.Option("0", "--layer", "-l", help="KAN layer: position (0, -1) or path"),
    edge: tuple[int, int] | None = typer.Option(
        None, "--edge", "-e", metavar="I J", help="plot phi(x) of the edge input I -> output J"
    ),
    checkpoint: Literal["best", "last"] = typer.Option("best", "--checkpoint"),
    top: int = typer.Option(10, "--top", min=1, help="edges listed in the overview"),
    debug: bool = DEBUG,
) -> None:
    """Show what a KAN layer learned: an edge's function phi(x) over its grid (knots marked) and
    the layer's edges ranked by importance (mean |phi|)."""
    from rich.table import Table

    from kan_engine import activations

    layers, epoch = activations.load_layers(run_dir, checkpoint)
    name, kan = activations.pick_layer(layers, layer)
    console = _console()
    console.print(
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
        console.print(f"inputs outside the grid: {share:.1%} (last training batch of epoch {at})")
    if edge is not None:
        i, j = edge
        curve = activations.edge_curve(kan, i, j)
        low, high = activations.grid_range(kan, i)
        typer.echo(
            _text_plot(
                {f"phi {i}->{j}": (curve.x, curve.y)},
                title=f"{name}: edge {i} -> {j} on [{low:.3g}, {high:.3g}] (| = grid knots)",
                xlabel=f"input {i}",
                marks=[(knot, "") for knot in curve.knots],
            )
        )
    ranked = activations.rank_edges(activations.edge_importance(kan), top)
    table = Table("rank", "edge (in -> out)", "mean |phi|", box=None, pad_edge=False)
    for rank, (i, j, score) in enumerate(ranked, 1):
        table.add_row(str(rank), f"{i} -> {j}", f"{score:.4g}")
    console.print(f"top {len(ranked)} edges of {name}, over {activations.UNIFORM}:")
    console.print(table)


@runs_app.command("list")
@_user_errors
def runs_list(ctx: typer.Context, out: Path = OUT, debug: bool = DEBUG) -> None:
    """Past runs in OUT, newest first (folders that cannot be read are named below the table)."""
    from rich.table import Table

    from kan_engine import history
    from kan_tui.formatting import RUN_COLUMNS, plain, run_cells

    rows, skipped = history.list_runs(out)
    console = _console()
    if not rows and not skipped:
        console.print(f"no runs in {printable(out)}", markup=False, highlight=False)
        return
    table = Table(*RUN_COLUMNS, "folder", box=None, pad_edge=False)
    for row in rows:
        table.add_row(*run_cells(row, digits=2), plain(row.path.name))
    console.print(table)
    for path, reason in skipped:
        line = f"skipped {printable(path)}: {printable(reason)}"
        console.print(line, markup=False, highlight=False)


CSV_OUT = typer.Option(
    None, "--csv", metavar="FILE", help="where to write (default RUN_DIR/metrics.csv; - prints)"
)


@runs_app.command("export")
@_user_errors
def runs_export(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    csv_path: Path | None = CSV_OUT,
    debug: bool = DEBUG,
) -> None:
    """Write a run's per-epoch metrics as CSV."""
    from kan_engine import history

    if csv_path is not None and str(csv_path) == "-":
        from kan_engine import runs

        runs.read_config(run_dir)  # a clear error for a folder that is not a run
        # the file keeps every value as it is; on a terminal a control character in a damaged
        # or forged metrics.jsonl is shown escaped (rows stay rows: newlines are kept)
        typer.echo(printable(history.metrics_csv(run_dir), keep_newlines=True), nl=False)
        return
    typer.echo(f"wrote {printable(history.export_csv(run_dir, csv_path))}")


def _text_plot(
    series: dict[str, tuple[list[float], list[float]]],
    *,
    title: str,
    xlabel: str,
    log_x: bool = False,
    marks: list[tuple[float, str]] | None = None,
) -> str:
    """A plotext line chart as text, as wide as the terminal (100 columns in a pipe), without
    colours in a pipe or under NO_COLOR; `marks` draws vertical lines at x values."""
    import os
    import shutil

    import plotext as plt

    columns, _ = shutil.get_terminal_size(fallback=(100, 30))
    plt.clear_figure()
    plt.plotsize(max(40, columns - 1), 20)
    for label, (xs, ys) in series.items():
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        if points:
            plt.plot(*zip(*points, strict=True), label=label, marker="braille")
    for x, label in marks or []:
        plt.vline(x, "red")
        if label:
            plt.text(label, x, min(y for _, ys in series.values() for y in ys if math.isfinite(y)))
    if log_x:
        plt.xscale("log")
        low = min(x for xs, _ in series.values() for x in xs)
        high = max(x for xs, _ in series.values() for x in xs)
        ticks = [
            10.0**k for k in range(math.ceil(math.log10(low)), math.floor(math.log10(high)) + 1)
        ]
        plt.xticks(ticks, [f"{t:g}" for t in ticks])
    plt.title(title)
    plt.xlabel(xlabel)
    text = plt.build()
    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        text = plt.uncolorize(text)
    return text


@presets_app.command("list")
@_user_errors
def presets_list(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Built-in and user presets with their descriptions."""
    from rich.table import Table

    from kan_engine import presets_io
    from kan_tui.formatting import plain

    table = Table("preset", "kind", "description", box=None, pad_edge=False)
    for info in presets_io.list_presets():
        # a description is anyone's text, read unvalidated: escaped, and not Rich markup
        table.add_row(info.name, "built-in" if info.builtin else "user", plain(info.description))
    console = _console()
    console.print(table)
    where = printable(presets_io.user_dir())
    console.print(f"user presets live in {where}", markup=False, highlight=False)


@presets_app.command("show")
@_user_errors
def presets_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="preset name or .toml file"),
    debug: bool = DEBUG,
) -> None:
    """Print a preset as TOML (every field, commented); redirect it to a file to share or edit."""
    from kan_engine import presets_io

    config, _ = presets_io.resolve(name)
    typer.echo(presets_io.render(config), nl=False)


@presets_app.command("save")
@_user_errors
def presets_save(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="new preset name: a-z, 0-9, '-', '_'"),
    source: str = typer.Option("lite", "--from", help="preset (name or file) to start from"),
    sets: list[str] = SETS,
    force: bool = typer.Option(False, "--force", help="overwrite an existing user preset"),
    debug: bool = DEBUG,
) -> None:
    """Save a preset (a copy of --from with --set overrides) as a user preset."""
    from kan_engine import presets_io
    from kan_tui import options

    presets_io.check_name(name)
    base, _, label = _load_preset(source)
    config = options.resolve(base, label, sets, {})
    typer.echo(f"saved {printable(presets_io.save(name, config, force=force))}")


@presets_app.command("delete")
@_user_errors
def presets_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="user preset name"),
    debug: bool = DEBUG,
) -> None:
    """Delete a user preset (built-ins cannot be deleted)."""
    from kan_engine import presets_io

    typer.echo(f"deleted {printable(presets_io.delete(name))}")


@presets_app.command("path")
@_user_errors
def presets_path(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Print the folder holding user presets ($KAN_TUI_CONFIG/presets when set)."""
    from kan_engine import presets_io

    typer.echo(str(presets_io.user_dir()))


def _read_data(config: RunConfig) -> Raw:
    """The data set, read and checked before anything is written: bad data (a corrupt file, one
    class, a regression target...) is one `error:` line and exit 2, and no run folder is made."""
    from kan_engine import data

    return data.read(config.data)


def _data_key(config: RunConfig) -> tuple[Any, ...]:
    """What decides which data `data.read` reads (augmentation does not)."""
    section = config.data
    return (section.dataset, section.data_dir, section.target, section.val_fraction)


def _label_by_model(
    config: RunConfig, preset_config: RunConfig, preset_name: str
) -> tuple[RunConfig, str]:
    """A run whose model is not its preset's is labelled by both (`lite-rapid_kan_power`), in
    its folder name and `runs list`, and its description says so: the preset's own description
    would name the wrong model."""
    model = config.model.name
    if model == preset_config.model.name:
        return config, preset_name
    described = config.model_copy(update={"description": f"{preset_name} preset, model {model}"})
    return described, f"{preset_name}-{model}"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", "", f"{out} exists and is not a folder")


def _console() -> Console:
    """Rich's stdout console; in a pipe or a file, tables are not wrapped at 80 columns."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console.width = 1000
    return console


def _reporter() -> HeadlessReporter:
    from kan_tui.headless import HeadlessReporter

    console = _console()
    return HeadlessReporter(console, interactive=console.is_terminal)


def _finish(trainer: Trainer, reporter: HeadlessReporter, debug: bool, quiet: bool) -> None:
    """Train and exit with the run's code; `quiet`: a torchrun rank other than 0 (rank 0 reports
    for all of them), which still prints its own failures."""
    from kan_tui import headless

    with reporter:
        code = headless.train(trainer, debug=debug, quiet=quiet)
    headless.ignore_late_signals()
    raise typer.Exit(code)

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
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import typer

from kan_engine.config import parse_value
from kan_engine.errors import ConfigError, KanError
from kan_tui.options import OPTION_KEYS, describe, flags

if TYPE_CHECKING:
    from rich.console import Console

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

F = TypeVar("F", bound=Callable[..., Any])

DEBUG = typer.Option(False, "--debug", help="show the traceback of errors")
NO_MOUSE = typer.Option(False, "--no-mouse", help="TUI: leave the mouse to the terminal")
OUT = typer.Option(Path("runs"), "--out", help="folder that gets one sub-folder per run")
SETS = typer.Option(
    [], "--set", metavar="SECTION.KEY=VALUE", help="override any preset field (repeatable)"
)
RUN_DIR = typer.Argument(..., help="a run folder (holding config.toml and checkpoints/)")


def _config_option(name: str, metavar: str) -> Any:
    """A named `run` option: its flags, metavar and help all come from the schema key it sets."""
    return typer.Option(None, *flags(name), metavar=metavar, help=describe(OPTION_KEYS[name]))


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
            print(f"error: {exc}", file=sys.stderr)
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
    preset: str = typer.Option(
        "lite", "--preset", "-p", metavar="NAME|FILE", help="preset name, or a .toml file"
    ),
    headless: bool = typer.Option(False, "--headless", help="train here, without the TUI"),
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as TOML and exit (no training)"
    ),
    model: str | None = _config_option("model", "NAME"),
    dataset: str | None = _config_option("dataset", "NAME"),
    data_dir: str | None = _config_option("data_dir", "PATH"),
    target: str | None = _config_option("target", "COLUMN"),
    epochs: str | None = _config_option("epochs", "INT"),
    batch_size: str | None = _config_option("batch_size", "INT"),
    lr: str | None = _config_option("lr", "FLOAT"),
    weight_decay: str | None = _config_option("weight_decay", "FLOAT"),
    optimizer: str | None = _config_option("optimizer", "NAME"),
    scheduler: str | None = _config_option("scheduler", "NAME"),
    warmup_epochs: str | None = _config_option("warmup_epochs", "FLOAT"),
    patience: str | None = _config_option("patience", "INT"),
    clip_grad_norm: str | None = _config_option("clip_grad_norm", "FLOAT"),
    prob_update_grid: str | None = _config_option("prob_update_grid", "FLOAT"),
    mixed_precision: str | None = _config_option("mixed_precision", "MODE"),
    device: str | None = _config_option("device", "DEVICE"),
    seed: str | None = _config_option("seed", "INT"),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help=describe(OPTION_KEYS["compile"])
    ),
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

    preset_config, preset_name = presets_io.resolve(preset)
    source = preset if presets_io.is_path_like(preset) else f"preset {preset}"
    named = {name: ctx.params[name] for name in OPTION_KEYS}
    config = options.resolve(preset_config, source, sets, named)
    if print_config:
        typer.echo(presets_io.render(config), nl=False)
        return
    _check_out(out)
    from kan_engine import distributed

    if not headless:
        if distributed.launched():
            raise ConfigError("torchrun", "--headless", "the TUI is one process: add --headless")
        tui_options = {"config": config, "preset_name": preset_name, "start": True, "out_dir": out}
        raise typer.Exit(_open_tui(mouse=not no_mouse, **tui_options))
    from kan_engine.trainer import Trainer

    with distributed.launch(config.train.device) as dist:
        reporter = _reporter()
        trainer = Trainer(config, sink=reporter, out_dir=out, preset_name=preset_name)
        _finish(trainer, reporter, debug, quiet=not dist.is_main)


@app.command()
@_user_errors
def resume(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    headless: bool = typer.Option(False, "--headless", help="train here, without the TUI"),
    debug: bool = DEBUG,
) -> None:
    """Continue a stopped or crashed run from its last checkpoint, in the same folder (under
    torchrun too, with any number of processes: the data order is that of the global batches)."""
    from kan_engine import distributed, runs
    from kan_engine.trainer import Trainer

    with distributed.launch(runs.read_config(run_dir).train.device) as dist:
        if not headless and dist.is_main:
            print("note: the TUI cannot resume a run yet; resuming here", file=sys.stderr)
        reporter = _reporter()
        trainer = Trainer.from_run_dir(run_dir, sink=reporter)
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
    from kan_engine.trainer import evaluate as evaluate_run

    result = evaluate_run(run_dir, split=split, checkpoint=checkpoint)
    typer.echo(
        f"{split} accuracy {result['acc']:.4f}  loss {result['loss']:.4f}  "
        f"({result['n']} samples, {checkpoint} checkpoint of {run_dir})"
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
    dataset: str | None = _config_option("dataset", "NAME"),
    data_dir: str | None = _config_option("data_dir", "PATH"),
    epochs: str | None = _config_option("epochs", "INT"),
    warmup_epochs: str | None = _config_option("warmup_epochs", "FLOAT"),
    batch_size: str | None = typer.Option(
        None,
        *flags("batch_size"),
        metavar="INT",
        help="samples per step; the LR is scaled from the preset's batch (--lr-scaling)",
    ),
    lr_scaling: Literal["sqrt", "linear", "none"] = typer.Option(
        "sqrt", "--lr-scaling", help="LR rule for --batch-size: x sqrt(ratio), x ratio, or as is"
    ),
    mixed_precision: str | None = _config_option("mixed_precision", "MODE"),
    device: str | None = _config_option("device", "DEVICE"),
    seed: str | None = _config_option("seed", "INT"),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help=describe(OPTION_KEYS["compile"])
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
) -> None:
    """Train several models on the same data and budget, one after the other, and print the
    time-to-accuracy table: epochs and training seconds to 85/90/92/93 % (test accuracy,
    evaluated every epoch, and validation accuracy), best val, test, seconds. Each model gets its
    own run folder under OUT/<stamp>-compare-<preset>/, beside compare.json and compare.md."""
    from kan_engine import compare as comparing
    from kan_engine import distributed, presets_io
    from kan_tui import headless, options

    if distributed.launched():
        raise ConfigError("torchrun", "compare", "trains one model after another: run it alone")
    names = comparing.parse_models(model_names or ",".join(comparing.DEFAULT_MODELS))
    per_model = comparing.parse_model_sets(set_for, names)
    preset_config, preset_name = presets_io.resolve(preset)
    source = preset if presets_io.is_path_like(preset) else f"preset {preset}"
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


def _whole(text: str, option: str) -> int:
    """A whole number from an option's text, or the one-line error naming the option."""
    value = parse_value(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(option, "train.batch_size", f"must be a whole number (got {text!r})")
    return value


def _model_options(kan: dict[str, Any]) -> dict[str, Any]:
    keys = ("grid_size", "spline_order", "grid_range", "scale_base", "scale_spline", "init")
    return {key: kan[key] for key in keys}


@presets_app.command("list")
@_user_errors
def presets_list(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Built-in and user presets with their descriptions."""
    from rich.table import Table

    from kan_engine import presets_io

    table = Table("preset", "kind", "description", box=None, pad_edge=False)
    for info in presets_io.list_presets():
        table.add_row(info.name, "built-in" if info.builtin else "user", info.description)
    console = _console()
    console.print(table)
    console.print(f"user presets live in {presets_io.user_dir()}", markup=False, highlight=False)


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
    base, _ = presets_io.resolve(source)
    label = source if presets_io.is_path_like(source) else f"preset {source}"
    config = options.resolve(base, label, sets, {})
    typer.echo(f"saved {presets_io.save(name, config, force=force)}")


@presets_app.command("delete")
@_user_errors
def presets_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="user preset name"),
    debug: bool = DEBUG,
) -> None:
    """Delete a user preset (built-ins cannot be deleted)."""
    from kan_engine import presets_io

    typer.echo(f"deleted {presets_io.delete(name)}")


@presets_app.command("path")
@_user_errors
def presets_path(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Print the folder holding user presets ($KAN_TUI_CONFIG/presets when set)."""
    from kan_engine import presets_io

    typer.echo(str(presets_io.user_dir()))


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
    raise typer.Exit(code)

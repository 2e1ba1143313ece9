"""`kan-tui run`, `resume` and `eval`: train a run, continue it, evaluate its checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from kan_engine import headline
from kan_engine.errors import ConfigError
from kan_engine.untrusted import printable
from kan_tui.cli.base import (
    CHECKPOINT,
    DEBUG,
    HEADLESS,
    NO_MOUSE,
    OUT,
    PRESET,
    RUN_DIR,
    SETS,
    app,
    check_out,
    command,
    load_preset,
    no_terminal,
    open_tui,
    pick_checkpoint,
    read_data,
    reporter,
)
from kan_tui.formatting import num, pct, sig
from kan_tui.options import OPTION_KEYS

if TYPE_CHECKING:
    from kan_engine.trainer import Trainer
    from kan_tui.headless import HeadlessReporter


@command(app, config=tuple(OPTION_KEYS))
def run(
    ctx: typer.Context,
    preset: str = PRESET,
    headless: bool = HEADLESS,
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as TOML and exit (no training)"
    ),
    sets: list[str] = SETS,
    out: Path = OUT,
    no_mouse: bool = NO_MOUSE,
    debug: bool = DEBUG,
    **named: Any,
) -> None:
    """Train from a preset, in the TUI or headless.

    Options override the preset: preset < --set < named options. Values are validated by the
    config schema, like preset values, so a bad one is reported with the option it came from;
    --batch-size auto picks the largest batch whose training step fits the device. Without
    --headless the TUI opens on the dashboard and starts the run.
    """
    from kan_engine import presets_io
    from kan_tui import options, run_label

    preset_config, preset_name, source = load_preset(preset)
    batch_auto = named["batch_size"] == "auto"
    if batch_auto:
        named["batch_size"] = None
    config = options.resolve(preset_config, source, sets, named)
    config, label = run_label.by_model(config, preset_config, preset_name)
    if batch_auto:
        from kan_engine import auto_batch

        config, note = auto_batch.pick(config)
        print(note, file=sys.stderr)
    if print_config:
        typer.echo(presets_io.render(config), nl=False)
        return
    check_out(out)
    from kan_engine import distributed

    headless = headless or no_terminal("training")
    if not headless:
        if distributed.launched():
            raise ConfigError("torchrun", "--headless", "the TUI is one process: add --headless")
        read_data(config)  # bad data: one error line here, not a failed run in the TUI
        # the TUI names the run itself (`TrainingRun`); its setup screen loads the real preset
        tui_options = {"config": config, "preset_name": preset_name, "start": True, "out_dir": out}
        raise typer.Exit(open_tui(mouse=not no_mouse, **tui_options))
    from kan_engine.trainer import Trainer

    with distributed.launch(config.train.device) as dist:
        sink = reporter()
        raw = read_data(config)  # before the run folder is made: bad data leaves none
        trainer = Trainer(config, sink=sink, out_dir=out, preset_name=label, raw=raw)
        del raw  # the trainer drops it once on the device
        _finish(trainer, sink, debug, quiet=not dist.is_main)


@command(app)
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
    no_mouse: bool = NO_MOUSE,
    debug: bool = DEBUG,
) -> None:
    """Continue a stopped or crashed run from its last checkpoint.

    It goes on in the same folder (under torchrun too, with any number of processes: the data
    order is that of the global batches). A finished or early-stopped run is left as it is
    (exit 0) unless --epochs extends it.
    """
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
    headless = headless or no_terminal("resuming")
    if not headless and not distributed.launched():
        resume_options = {"resume": plan, "out_dir": plan.run_dir.parent}
        raise typer.Exit(open_tui(mouse=not no_mouse, **resume_options))
    with distributed.launch(plan.config.train.device) as dist:
        if not headless and dist.is_main:
            print("note: the TUI is one process: resuming headless under torchrun", file=sys.stderr)
        sink = reporter()
        trainer = Trainer.from_run_dir(run_dir, sink=sink, plan=plan)
        _finish(trainer, sink, debug, quiet=not dist.is_main)


@command(app, "eval")
def evaluate(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    split: Literal["test", "val"] = typer.Option(
        "test", "--split", metavar="test|val", help="split to evaluate"
    ),
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    debug: bool = DEBUG,
) -> None:
    """Evaluate a run's checkpoint on a split.

    Prints the accuracy and loss (a regression: RMSE, MAE, R² and loss)."""
    from kan_engine.run_setup import evaluate as evaluate_run

    which = pick_checkpoint(run_dir, checkpoint)
    result = evaluate_run(run_dir, split=split, checkpoint=which)
    typer.echo(
        f"{split} {_scores(result)}  "
        f"({result['n']} samples, {which} checkpoint of {printable(run_dir)})"
    )


def _scores(result: dict[str, Any]) -> str:
    """`evaluate`'s metrics, each named: a classification's accuracy and loss; a regression's
    RMSE, MAE and R² (target units), then its loss (the MSE on standardised targets, which
    falls far below 0.0001, so in significant digits)."""
    if headline.kind_of(result) == headline.REGRESSION:
        named = "  ".join(f"{name} {sig(result[name])}" for name in headline.REGRESSION_METRICS)
        return f"{named}  loss {num(result['loss'])}"
    return f"accuracy {pct(result['acc'])}  loss {result['loss']:.4f}"


def _finish(trainer: Trainer, sink: HeadlessReporter, debug: bool, quiet: bool) -> None:
    """Train and exit with the run's code; `quiet`: a torchrun rank other than 0 (rank 0 reports
    for all of them), which still prints its own failures."""
    from kan_tui import headless, signals

    sink.follow(lambda: trainer.c.global_step)
    with sink:
        code = headless.train(trainer, debug=debug, quiet=quiet)
    signals.ignore_late_signals()
    raise typer.Exit(code)

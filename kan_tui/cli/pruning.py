"""`kan-tui prune` and `attribution`: a smaller KAN from a trained one, and which inputs matter."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Literal

import typer

from kan_engine import headline
from kan_engine.untrusted import printable
from kan_tui.cli.base import (
    CHECKPOINT,
    DEBUG,
    OUT,
    RUN_DIR,
    app,
    check_out,
    command,
    console,
    pick_checkpoint,
    reporter,
)
from kan_tui.formatting import pct, sig


@command(app)
def prune(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    threshold: float = typer.Option(
        ...,
        "--threshold",
        "-t",
        metavar="T",
        help="drop edges and hidden nodes scoring below T (scores: 1 = the strongest of its "
        "layer; e.g. 0.05)",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        min=0,
        metavar="INT",
        help="epochs of fine-tuning (default 5; 0: none, the pruned run is written, stopped "
        "before its first step)",
        show_default=False,
    ),
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    out: Path = OUT,
    debug: bool = DEBUG,
) -> None:
    """Prune a KAN run's edges and hidden nodes, then fine-tune it as a new run.

    Edges are scored by mean |phi| on the training split's first batches, attributed back from
    the outputs (pykan's scheme), and each score is read against the strongest of its layer.
    Edges below T are masked (they stay exactly 0 while fine-tuning); a flat_kan's hidden nodes
    below T are removed, so the new run's model.width is smaller (other KAN models keep their
    widths: edges only). The test metric is shown before pruning, after it, and after
    fine-tuning; the new run folder is an ordinary run (resume, eval, inspect, predict).
    Magnitudes miss edges whose effects cancel further on: train with --set kan.reg_weight=0.003
    (the KAN paper's sparsity regulariser) for sharper scores.
    """
    from kan_engine import prune_run, runs
    from kan_tui import headless

    check_out(out)
    which = pick_checkpoint(run_dir, checkpoint)
    if epochs is None:
        epochs = prune_run.DEFAULT_EPOCHS
    pruned = prune_run.prepare(run_dir, which, threshold=threshold, epochs=epochs)
    stdout = console()
    kind = pruned.opened.bundle.task.kind
    stdout.print(
        f"{printable(run_dir)}: {which} checkpoint, {pruned.opened.config.model.name}; scores on "
        f"{len(pruned.opened.samples):,} training rows",
        markup=False,
        highlight=False,
    )
    kept = pruned.result.summary(pruned.edges_before)
    if not pruned.nodes:
        kept += f" (model {pruned.config.model.name}: its widths are fixed, edges masked only)"
    stdout.print(kept, markup=False, highlight=False)
    scores = {"original": pruned.original, "pruned": pruned.pruned}
    stdout.print(_line(kind, scores), markup=False, highlight=False)
    sink = reporter()
    trainer = prune_run.trainer(pruned, sink=sink, out_dir=out)
    sink.follow(lambda: trainer.c.global_step)
    if epochs == 0:
        trainer.stop()  # before its first step: last.pt holds the pruned model, status stopped
        with sink:
            trainer.run()
        where = printable(shlex.quote(str(trainer.run_dir)))
        stdout.print(
            f"not fine-tuned (--epochs 0): kan-tui resume {where} fine-tunes it for "
            f"{pruned.config.train.epochs} epochs",
            markup=False,
            highlight=False,
        )
        return
    with sink:
        code = headless.train(trainer, debug=debug)
    summary = runs.read_summary(trainer.run_dir)
    metric = headline.metric(kind)
    tuned = summary.get(f"test_{metric}")
    if isinstance(tuned, (int, float)):
        scores["fine-tuned"] = {metric: float(tuned)}
    stdout.print(_line(kind, scores), markup=False, highlight=False)
    stdout.print(f"pruned run: {printable(trainer.run_dir)}", markup=False, highlight=False)
    raise typer.Exit(code)


def _line(kind: str, scores: dict[str, dict[str, Any]]) -> str:
    """`test accuracy: original 94.71 %, pruned 92.48 %` (a regression: RMSE)."""
    metric = headline.metric(kind)
    name, shown = ("RMSE", sig) if kind == headline.REGRESSION else ("accuracy", pct)
    parts = ", ".join(f"{label} {shown(values[metric])}" for label, values in scores.items())
    return f"test {name}: {parts}"


@command(app)
def attribution(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    top: int = typer.Option(20, "--top", min=1, metavar="INT", help="inputs listed"),
    debug: bool = DEBUG,
) -> None:
    """Rank a KAN run's inputs (CSV columns, x1.., pixels) by importance.

    An input's score is the importance that flows out of it (the prune command's attribution,
    on the training split's first batches), read against the most important input (1). Needs
    KAN layers on the inputs (flat_kan, kan, fast_exact_kan, memory_safe_kan). An input the
    target ignores can still score well when its edges cancel further on; a run trained with
    --set kan.reg_weight=0.003 (the KAN paper's sparsity regulariser) is read more sharply.
    """
    from rich.table import Table
    from rich.text import Text

    from kan_engine import prune_run

    which = pick_checkpoint(run_dir, checkpoint)
    result = prune_run.attribution(run_dir, which)
    stdout = console()
    stdout.print(
        f"{printable(run_dir)}: {which} checkpoint, {result.model}; {len(result.ranked)} inputs "
        f"scored on {result.samples:,} training rows (1 = the most important)",
        markup=False,
        highlight=False,
    )
    table = Table("rank", "input", "importance", box=None, pad_edge=False)
    for rank, (name, score) in enumerate(result.ranked[:top], 1):
        note = "  (constant on the training data)" if name in result.constant else ""
        table.add_row(str(rank), Text(printable(name)), f"{score:.3f}{note}")
    stdout.print(table)
    if len(result.ranked) > top:
        print(f"note: {len(result.ranked) - top} more (--top)", file=sys.stderr)

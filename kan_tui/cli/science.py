"""`kan-tui symbolic`: read a trained KAN as formulas, and say how faithful they are."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from kan_engine.untrusted import printable
from kan_tui.cli.base import CHECKPOINT, DEBUG, RUN_DIR, app, command, console, pick_checkpoint
from kan_tui.formatting import pct, sig

CANDIDATES_SHOWN = 3  # per edge


@command(app)
def symbolic(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    threshold: float = typer.Option(
        0.0,
        "--threshold",
        metavar="T",
        help="edges whose importance (mean |phi| on training inputs) is below T become 0",
    ),
    digits: int = typer.Option(
        4, "--digits", min=1, max=17, metavar="N", help="significant digits of the constants shown"
    ),
    debug: bool = DEBUG,
) -> None:
    """Read a flat_kan run as formulas, checked against the network.

    Every edge is fitted to a library of functions (x, x^2, exp, sin, log, ...) as
    a*f(b*x + c) + d, the edges are composed into one formula per output, and each formula is
    scored on the test split from its own values, beside the network's score."""
    from kan_engine import symbolic_run

    which = pick_checkpoint(run_dir, checkpoint)
    result = symbolic_run.formula_of(run_dir, which, threshold=threshold)
    out = console()
    shown = result.formula
    out.print("edges (layer, input -> output: best fits, R²)", highlight=False)
    for edge in shown.edges:
        where = f"  {edge.layer}: {edge.in_index} -> {edge.out_index}"
        if edge.chosen is None:
            out.print(f"{where}  0 (importance {edge.importance:.3g} < {threshold:g})")
            continue
        fits = ", ".join(f"{fit.name} {fit.r2:.6f}" for fit in edge.candidates[:CANDIDATES_SHOWN])
        out.print(f"{where}  {printable(fits)}", highlight=False)
    for name, formula in zip(result.outputs, shown.rounded(digits), strict=True):
        out.print(f"{printable(name)} = {printable(formula)}", highlight=False, soft_wrap=True)
    metric = (lambda v: sig(v)) if result.task == "regression" else pct
    keys = ("rmse", "mae", "r2") if result.task == "regression" else ("acc",)
    for label, scores in (("network", result.network), ("formula", result.from_formula)):
        parts = "  ".join(f"{key} {metric(scores[key])}" for key in keys)
        out.print(f"test ({result.test_size:,}) {label}: {parts}", highlight=False)
    if result.from_formula.get("nonfinite"):
        out.print(
            f"warning: the formula is not finite on {result.from_formula['nonfinite']} test "
            "inputs (outside the range its edges were fitted on)",
            style="yellow",
        )

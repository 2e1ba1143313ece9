"""`kan-tui predict` and `export`: use a trained run's model on new inputs, or elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer

from kan_engine.untrusted import printable
from kan_tui.cli.base import (
    CHECKPOINT,
    DEBUG,
    RUN_DIR,
    app,
    command,
    console,
    path_value,
    pick_checkpoint,
)

if TYPE_CHECKING:
    from kan_engine.predict import Prediction

INPUTS = typer.Argument(
    ...,
    metavar="INPUTS",
    help="an image file, a folder or a quoted glob of images, a CSV of feature rows (the training"
    " table's columns; its label column, if there, is ignored but for the accuracy), an IDX file"
    " of images, or test (the run's own test split)",
    show_default=False,
)
PREDICTIONS_OUT = typer.Option(
    None,
    "--out",
    metavar="FILE.csv|FILE.jsonl",
    help="write every row here instead of a table",
    parser=path_value,
)
EXPORT_OUT = typer.Option(
    None,
    "--out",
    metavar="FILE",
    help="where (default: RUN_DIR/export/model.<format>)",
    parser=path_value,
)
SHOWN_ROWS = 1000  # the terminal table's limit; --out writes every row


@command(app)
def predict(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    inputs: str = INPUTS,
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        metavar="K",
        help="classes shown per input (default: 3)",
        show_default=False,
    ),
    out: Path | None = PREDICTIONS_OUT,
    batch_size: int | None = typer.Option(
        None, "--batch-size", metavar="N", help="inputs per forward (default: eval's)"
    ),
    debug: bool = DEBUG,
) -> None:
    """Predict with a run's model on new inputs.

    Classes and probabilities, or values for a regression.

    Inputs are normalised with the statistics of the run's training split, kept in the
    checkpoint (never computed from the new inputs); images are converted to the run's grey or
    RGB and resized to its size when theirs differs.
    """
    from kan_engine import inference_inputs, trained
    from kan_engine import predict as predicting

    if out is not None:
        predicting.check_out(out)
    which = pick_checkpoint(run_dir, checkpoint)
    model = trained.load(run_dir, which)
    k, size = predicting.check_options(model, top_k, batch_size)
    rows = inference_inputs.read(inputs, model.meta, model.checkpoint.config)
    for notice in [*model.notices, *rows.notices]:
        print(f"note: {printable(notice)}", file=sys.stderr)
    result = predicting.run(model, rows, batch_size=size, top_k=k)
    if out is not None:
        predicting.write(result, out)
        typer.echo(f"wrote {len(rows.names)} predictions to {printable(out)}")
    else:
        _table(result)
    summary = result.summary()
    if summary is not None:
        typer.echo(f"{summary} ({which} checkpoint of {printable(run_dir)})")


def _table(result: Prediction) -> None:
    """The rows on the terminal, user text (file names, classes) as escaped `Text`."""
    from rich.table import Table
    from rich.text import Text

    records = result.records()
    labelled = result.inputs.targets is not None
    if result.task == "regression":
        table = Table("input", *result.names, box=None, pad_edge=False)
    else:
        columns = ["input", "class", "probability", "top-k"]
        table = Table(*columns, *(["label"] * labelled), box=None, pad_edge=False)
    for record in records[:SHOWN_ROWS]:
        cells = [printable(record["input"])]
        if result.task == "regression":
            cells += [f"{value:.6g}" for value in record["values"].values()]
        else:
            top = ", ".join(
                f"{printable(t['class'])} {t['probability']:.3f}" for t in record["top"]
            )
            cells += [printable(record["class"]), f"{record['probability']:.4f}", top]
            if labelled:
                cells.append(printable(record["label"]))
        table.add_row(*(Text(cell) for cell in cells))
    console().print(table)
    if len(records) > SHOWN_ROWS:
        typer.echo(f"... {len(records) - SHOWN_ROWS} more rows: --out FILE.csv writes them all")


@command(app)
def export(
    ctx: typer.Context,
    run_dir: Path = RUN_DIR,
    fmt: Literal["onnx", "torchscript", "safetensors"] = typer.Option(
        ..., "--format", metavar="onnx|torchscript|safetensors", help="what to write"
    ),
    out: Path | None = EXPORT_OUT,
    checkpoint: Literal["best", "last"] | None = CHECKPOINT,
    debug: bool = DEBUG,
) -> None:
    """Export a run's model (ONNX, TorchScript, safetensors).

    Checked against the PyTorch model before it is written.

    ONNX (dynamic batch axis, checked with onnxruntime) and TorchScript trace the KAN layers'
    reference path, the same function as the fast one; safetensors writes the weights alone
    and a JSON beside them that kan_engine.models.load builds the model from, without pickle.
    Inputs are normalised as in training; the statistics go with the export.
    """
    import torch

    from kan_engine import export as exporting
    from kan_engine import trained

    exporting.require(fmt)
    target = out if out is not None else exporting.default_path(run_dir, fmt)
    if out is not None:
        exporting.check_out(out, fmt)
    which = pick_checkpoint(run_dir, checkpoint)
    model = trained.load(run_dir, which, device=torch.device("cpu"))
    for notice in model.notices:
        print(f"note: {printable(notice)}", file=sys.stderr)
    result = exporting.export(model, fmt, target)
    written = ", ".join(printable(path) for path in result.paths)
    typer.echo(
        f"wrote {written} ({which} checkpoint, epoch {model.checkpoint.epoch}); "
        f"checked with {result.check}: max abs difference {result.max_diff:.2g}"
    )

"""`kan-tui runs list` and `runs export`: past runs and their metrics."""

from __future__ import annotations

from pathlib import Path

import typer

from kan_engine.untrusted import printable
from kan_tui.cli.base import DEBUG, OUT, RUN_DIR, check_out, command, console, path_value, runs_app

CSV_OUT = typer.Option(
    None,
    "--csv",
    metavar="FILE",
    help="where to write (default RUN_DIR/metrics.csv; - prints)",
    parser=path_value,
)


@command(runs_app, "list")
def runs_list(ctx: typer.Context, out: Path = OUT, debug: bool = DEBUG) -> None:
    """Past runs in OUT, newest first.

    Folders that cannot be read are named below the table, with the reason.
    """
    from rich.table import Table

    from kan_engine import history
    from kan_tui.formatting import RUN_COLUMNS, run_cells

    check_out(out)
    rows, skipped = history.list_runs(out)
    stdout = console()
    if not rows and not skipped:
        missing = "" if out.exists() else " (no such folder)"
        stdout.print(f"no runs in {printable(out)}{missing}", markup=False, highlight=False)
        return
    table = Table(*RUN_COLUMNS, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*run_cells(row))
    stdout.print(table)
    for path, reason in skipped:
        line = f"skipped {printable(path)}: {printable(reason)}"
        stdout.print(line, markup=False, highlight=False)


@command(runs_app, "export")
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

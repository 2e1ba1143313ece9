"""The `kan-tui` command: the entry point only.

The commands live by group: `train` (run, resume, eval), `use` (predict, export), `science`
(symbolic), `pruning` (prune, attribution), `tools` (compare, lr-find, inspect, models), `runs`
(runs list / export) and `presets` (presets list / show / save / delete / path);
`base` holds what they share (the Typer apps, the common options, the error wrapper).

Importing this package stays light (Typer and the pydantic config schema) so that `--help` and
`--version` are instant: torch, the trainer and the Rich reporter are imported inside the commands
that train, and textual only where the TUI opens, so `run --headless` on a server never needs it.

Errors the user can fix (KanError: a bad preset or option, missing data, an incomplete run folder)
print one line, `error: <source>: <key>: <reason>`, and exit 2; `--debug` adds the traceback.
The exit codes are those of `kan_tui.exit_codes`.
"""

from __future__ import annotations

import sys

import typer

from kan_tui import exit_codes
from kan_tui.cli.base import DEBUG, NO_MOUSE, app, open_tui, terminal

# each module registers its commands when imported: this order is the order of `--help`
# isort: off
from kan_tui.cli import train, use, science, pruning, tools, runs, presets  # noqa: F401
# isort: on

__all__ = ["app"]


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
        if not terminal():  # in a pipe or cron it wrote escape codes and hung, waiting for keys
            print(
                "error: the terminal UI needs a terminal (stdin and stdout are not both one); "
                "use a command instead, e.g. kan-tui run --headless (kan-tui --help lists them)",
                file=sys.stderr,
            )
            raise typer.Exit(exit_codes.USAGE)
        raise typer.Exit(open_tui(mouse=not no_mouse))

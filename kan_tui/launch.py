"""The `kan-tui` entry point, for the console script and `python -m kan_tui` alike.

Importing the CLI (Typer, click, pydantic and the config schema) and Typer's building of the
click commands from the signatures take the first few tenths of a second of every command, before
any command's own Ctrl-C handling (`base.user_errors`) is in place: a Ctrl-C then printed Python's
traceback of whatever was being imported or inspected. Here it
ends as it does inside a command: `interrupted` on stderr and exit 130. Only the standard library
and `exit_codes` are imported before the guard.
"""

from __future__ import annotations

import sys

from kan_tui import exit_codes


def main() -> None:
    """Import and run the CLI under a Ctrl-C guard."""
    try:
        from kan_tui.cli import app

        app(prog_name="kan-tui")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(exit_codes.INTERRUPTED) from None

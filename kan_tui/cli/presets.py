"""`kan-tui presets list / show / save / delete / path`: the built-in and user presets."""

from __future__ import annotations

import typer

from kan_engine.untrusted import printable
from kan_tui.cli.base import DEBUG, SETS, command, console, load_preset, presets_app


@command(presets_app, "list")
def presets_list(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Built-in and user presets with their descriptions."""
    from rich.table import Table

    from kan_engine import presets_io
    from kan_tui.formatting import plain

    table = Table("preset", "kind", "description", box=None, pad_edge=False)
    for info in presets_io.list_presets():
        # a description is anyone's text, read unvalidated: escaped, and not Rich markup
        table.add_row(info.name, "built-in" if info.builtin else "user", plain(info.description))
    stdout = console()
    stdout.print(table)
    where = printable(presets_io.user_dir())
    stdout.print(f"user presets live in {where}", markup=False, highlight=False)


@command(presets_app, "show")
def presets_show(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME|FILE", help="preset name or .toml file"),
    debug: bool = DEBUG,
) -> None:
    """Print a preset as TOML, every field commented.

    Redirect it to a file to share or edit it.
    """
    from kan_engine import presets_io

    config, _ = presets_io.resolve(name)
    typer.echo(presets_io.render(config), nl=False)


@command(presets_app, "save")
def presets_save(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="new preset name: a-z, 0-9, '-', '_'"),
    source: str = typer.Option(
        "lite", "--from", metavar="NAME|FILE", help="preset (name or file) to start from"
    ),
    sets: list[str] = SETS,
    force: bool = typer.Option(False, "--force", help="overwrite an existing user preset"),
    debug: bool = DEBUG,
) -> None:
    """Save a copy of a preset, with --set overrides, as a user preset.

    The copy is of --from (a preset name or file); an existing user preset needs --force.
    """
    from kan_engine import presets_io
    from kan_tui import options

    presets_io.check_name(name)
    base, _, label = load_preset(source)
    config = options.resolve(base, label, sets, {})
    typer.echo(f"saved {printable(presets_io.save(name, config, force=force))}")


@command(presets_app, "delete")
def presets_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="user preset name"),
    debug: bool = DEBUG,
) -> None:
    """Delete a user preset (built-ins cannot be deleted)."""
    from kan_engine import presets_io

    typer.echo(f"deleted {printable(presets_io.delete(name))}")


@command(presets_app, "path")
def presets_path(ctx: typer.Context, debug: bool = DEBUG) -> None:
    """Print the folder holding user presets.

    It is $KAN_TUI_CONFIG/presets when KAN_TUI_CONFIG is set.
    """
    from kan_engine import presets_io

    typer.echo(str(presets_io.user_dir()))

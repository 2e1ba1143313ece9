"""What every `kan-tui` command shares: the Typer apps, the common options, the help format,
the error wrapper and the few helpers that several commands call.

Nothing here imports torch, textual or the trainer at import time: they come inside the helpers
and the commands that need them, so `--help`, `presets ...` and `run --print-config` stay light.
"""

from __future__ import annotations

import errno
import functools
import inspect
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import typer
from typer.core import TyperCommand

from kan_engine.config import RunConfig
from kan_engine.errors import ConfigError, KanError, interrupted
from kan_engine.untrusted import printable
from kan_tui import exit_codes
from kan_tui.options import BY_OPTION, FIELDS, FLAG, flags

if TYPE_CHECKING:
    import click
    from rich.console import Console

    from kan_engine.datasets import Raw
    from kan_tui.headless import HeadlessReporter

F = TypeVar("F", bound=Callable[..., Any])

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


def path_value(value: str | Path) -> Path:
    """The parser of every path option and argument: an empty value is refused.
    `--out ""` (an unset shell variable, as often as not) was Path(""), the current folder, so a
    run, an export or a CSV landed there, or an error named "." for a name never typed."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty (an unset shell variable?)")
    return Path(value)


DEBUG = typer.Option(False, "--debug", help="show the traceback of errors")
NO_MOUSE = typer.Option(False, "--no-mouse", help="TUI: leave the mouse to the terminal")
OUT = typer.Option(
    Path("runs"),
    "--out",
    metavar="PATH",
    help="folder that gets one sub-folder per run",
    parser=path_value,
)
SETS = typer.Option(
    [], "--set", metavar="SECTION.KEY=VALUE", help="override any preset field (repeatable)"
)
RUN_DIR = typer.Argument(
    ...,
    metavar="RUN_DIR",
    help="a run folder (holding config.toml and checkpoints/)",
    parser=path_value,
)
PRESET = typer.Option(
    "lite",
    "--preset",
    "-p",
    metavar="NAME|FILE",
    help="preset name (auto: sprint on a GPU, cpu elsewhere), or a .toml file",
)
HEADLESS = typer.Option(False, "--headless", help="train here, without the TUI")
CHECKPOINT = typer.Option(
    None,
    "--checkpoint",
    metavar="best|last",
    help="best: checkpoints/best.pt, the epoch of the best val accuracy; last: checkpoints/last.pt"
    " (default: best, or last when no epoch has finished)",
    show_default=False,
)


class Command(TyperCommand):
    """Help in the usual Unix form: `RUN_DIR` in the usage line and the Arguments list (Typer
    writes `{run_dir}` and `run_dir <path>`); options show the metavars they are given."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces += param.get_usage_pieces(ctx)
                continue
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param: click.Parameter) -> str:
    return (param.metavar or (param.name or "").upper()) + ("..." if param.nargs != 1 else "")


def config_option(name: str, help: str | None = None) -> Any:
    """The option of a row of the field table: its flags, metavar and (unless `help` says
    otherwise) its help, the schema's description of the key it sets."""
    field = BY_OPTION[name]
    if field.metavar == FLAG:
        dashed = flags(name)[0]
        return typer.Option(None, f"{dashed}/--no-{dashed[2:]}", help=help or field.help)
    return typer.Option(None, *flags(name), metavar=field.metavar, help=help or field.help)


def config_options(names: tuple[str, ...]) -> Callable[[F], F]:
    """Give a command the named options of the field table (`--lr`, `--epochs`, ...), in the
    table's order, placed before its `--set`; their values (None: not given) reach its
    `**named`. `run` lists every row that has an option, so a row added to the table is a `run`
    option at once."""

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = next(i for i, p in enumerate(own) if p.name == "sets")
        added = [
            inspect.Parameter(
                f.option,
                inspect.Parameter.KEYWORD_ONLY,
                default=config_option(f.option),
                annotation=bool | None if f.metavar == FLAG else str | None,
            )
            for f in FIELDS
            if f.option in names
        ]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        command.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*own[:at], *added, *own[at:]]
        )
        return command

    return decorate


def command(
    group: typer.Typer, name: str | None = None, *, config: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Register a command on `group`: the Unix-style help, the error wrapper (`user_errors`) and
    the field table's options named in `config`."""

    def decorate(func: F) -> F:
        wrapped = user_errors(config_options(config)(func) if config else func)
        group.command(name, cls=Command)(wrapped)
        return func

    return decorate


# what the file system answers about a path that cannot be one, whatever it is used for: any
# check of it (exists, is_dir, lstat) raises these, and only the user's path can be the cause
UNUSABLE_PATH = (errno.ENAMETOOLONG, errno.ELOOP)
PATH_SHOWN = 120  # characters of such a path the error line shows


def user_errors(command: F) -> F:
    """One line on stderr and exit 2 for errors the user can fix (KanError, and a path the file
    system refuses as such: `UNUSABLE_PATH`); 130 on Ctrl-C outside training, also where a
    library turned the KeyboardInterrupt into an error of its own (`errors.interrupted`)."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        ctx: typer.Context = kwargs["ctx"]
        debug = kwargs.get("debug") or ctx.find_root().params.get("debug", False)
        try:
            return command(**kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(exit_codes.INTERRUPTED) from None
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # the command's own exit or usage error
        except Exception as exc:
            if interrupted(exc):
                print("interrupted", file=sys.stderr)
                raise typer.Exit(exit_codes.INTERRUPTED) from None
            if not _fixable(exc):
                raise  # a failure to show as one, not bad input
            if debug:
                traceback.print_exc()
            print(f"error: {printable(_user_message(exc))}", file=sys.stderr)  # user text
            raise typer.Exit(exit_codes.USAGE) from None

    return wrapper  # type: ignore[return-value]


def _fixable(exc: Exception) -> bool:
    return isinstance(exc, KanError) or isinstance(exc, OSError) and exc.errno in UNUSABLE_PATH


def _user_message(exc: Exception) -> str:
    """A KanError's message; for an unusable path, the path (cut short) and the reason."""
    if not isinstance(exc, OSError):
        return str(exc)
    name = str(exc.filename)
    if len(name) > PATH_SHOWN:
        name = f"{name[: PATH_SHOWN // 2]}...{name[-PATH_SHOWN // 3 :]} ({len(name):,} characters)"
    return f"{name}: {exc.strerror}"


def terminal() -> bool:
    """Whether the TUI can run here: in a pipe or a file it would write escape codes and wait
    for keys that never come."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def no_terminal(doing: str) -> bool:
    """Whether the TUI cannot run here (`terminal`), so the command goes on headless and says
    so."""
    if terminal():
        return False
    print(f"note: not a terminal: {doing} headless (add --headless to say so)", file=sys.stderr)
    return True


def open_tui(*, mouse: bool, **app_options: Any) -> int:
    """Run the TUI (the one app factory, shared with the tests); returns its exit code."""
    from kan_tui.app import create_app

    tui = create_app(**app_options)
    tui.run(mouse=mouse)
    if tui.stopped_run is not None:  # the terminal is the shell's again: say where the run is
        run_dir, epoch = tui.stopped_run
        where = printable(shlex.quote(run_dir))
        print(
            f"stopped {printable(run_dir)} at epoch {epoch} (last.pt written); "
            f"continue it with: kan-tui resume {where}",
            file=sys.stderr,
        )
    return tui.return_code or 0


def load_preset(ref: str) -> tuple[RunConfig, str, str]:
    """The preset's config, its name, and the source that errors about its values name."""
    from kan_engine import presets_io

    config, name = presets_io.resolve(ref)
    return config, name, ref if presets_io.is_path_like(ref) else f"preset {name}"


def pick_checkpoint(run_dir: Path, which: str | None) -> str:
    """`--checkpoint` or its default (best.pt, last.pt when that is all there is: said on
    stderr, so the printed result is not mistaken for the best epoch's)."""
    from kan_engine import runs

    picked, note = runs.pick_checkpoint(run_dir, which)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return picked


def read_data(config: RunConfig) -> Raw:
    """The data set, read and checked before anything is written: bad data (a corrupt file, one
    class, a regression target...) is one `error:` line and exit 2, and no run folder is made."""
    from kan_engine import data

    return data.read(config.data)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", "", f"{out} exists and is not a folder")


def console() -> Console:
    """Rich's stdout console; in a pipe or a file, tables are not wrapped at 80 columns."""
    from rich.console import Console

    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 1000
    return stdout


def reporter() -> HeadlessReporter:
    from kan_tui.headless import HeadlessReporter

    stdout = console()
    return HeadlessReporter(stdout, interactive=stdout.is_terminal)

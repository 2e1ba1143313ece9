"""Hostile input through the real `kan-tui` CLI and the TUI (issue 15, classes 2 and 3).

Class 2: files that are not regular files, and TOML that is legal but absurd. A FIFO, a device
behind a symlink, a socket or a folder must be refused at once by its kind (a FIFO used to hang
forever, /dev/zero to fill memory); nesting hundreds deep, integers past Python's digit limit,
`true` where a number belongs and grid ranges that crashed training must be one `error:` line
naming the source and the key, exit 2. What validation accepts must train.

Class 3: text from users is shown with control characters escaped and never read as Rich or
Textual markup: `presets list`, `runs list`, the headless log, error lines, the TUI.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    SIZE,
    error_line,
    fix_memory_estimate,
    type_into,
    unwrapped,
    visible_text,
    wait_until,
)
from rich.console import Console
from textual.widgets import Static
from typer.testing import CliRunner, Result

from kan_engine import presets_io, runs, untrusted
from kan_engine.config import RunConfig, apply_overrides, parse_value
from kan_engine.errors import ConfigError
from kan_engine.events import Notice
from kan_engine.kan import KANLinear
from kan_tui.app import create_app
from kan_tui.cli import app
from kan_tui.headless import HeadlessReporter
from kan_tui.screens.setup import SetupScreen
from kan_tui.widgets.presets import PresetList

# what a terminal acts on: none of it may reach stdout or stderr raw
RAW = ("\x1b", "\x07", "\r", "\x9b", "\u202e", "\u2028")
# a description that retitles the window, clears the screen, forges a table row, and is markup
HOSTILE = (
    "evil\x1b]0;pwned\x07 \x1b[2J\r\nfake  user  row \x9b31m \u202eabc "
    "[bold red]x[/] [link=http://e.vil]y[/link]"
)
SHOWN = (  # how HOSTILE must appear: escaped, markup literal
    r"evil\x1b]0;pwned\x07 \x1b[2J\r\nfake  user  row \x9b31m \u202eabc "
    "[bold red]x[/] [link=http://e.vil]y[/link]"
)
CLI_TINY = ["--dataset", "digits", "--model", "kan", "--device", "cpu", "--epochs", "1",
            "--warmup-epochs", "0", "--patience", "0", "--seed", "1", "--out", "out"]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated(isolated: Path) -> Path:
    return isolated


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def user_presets() -> Path:
    folder = presets_io.user_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def toml_string(text: str) -> str:
    """`text` as a TOML basic string, every non-ASCII character as \\uXXXX (TOML's own escape)."""
    body = "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\u{ord(c):04x}" for c in text)
    return f'"{body}"'


@contextlib.contextmanager
def unblocked_after(fifo: Path, seconds: float = 30.0) -> Iterator[threading.Event]:
    """A safety net, not a synchronisation: if a reader is still blocked on `fifo` after
    `seconds` (the bug), open and close its write end so that the reader sees EOF and the test
    fails instead of hanging. The event yielded says whether the net was needed."""
    done, fired = threading.Event(), threading.Event()

    def rescue() -> None:
        if not done.wait(seconds):
            fired.set()
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading after all
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
        thread.join()


# --- class 2: files that are not regular files ---------------------------------------------------


def test_a_fifo_preset_is_refused_at_once(isolated: Path) -> None:
    fifo = isolated / "pipe.toml"
    os.mkfifo(fifo)
    for args in (
        ["run", "--print-config", "-p"],
        ["presets", "show"],
        ["presets", "save", "m", "--from"],
    ):
        with unblocked_after(fifo) as rescued:
            result = cli(*args, str(fifo))
        assert not rescued.is_set(), "the CLI blocked on the FIFO"
        error_line(result, 2, f"{fifo}: is a named pipe (FIFO), not a regular file")
    assert not (presets_io.user_dir() / "m.toml").exists()  # nothing half-made


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_not_waited_on(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: `stat` saw a regular file, then the path became a FIFO before the open. The
    non-blocking open and the `fstat` of the opened descriptor catch it."""
    regular = isolated / "regular.toml"
    regular.write_text("[optim]\nlr = 0.01\n")
    fifo = isolated / "swapped.toml"
    os.mkfifo(fifo)
    real = os.stat

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    with unblocked_after(fifo) as rescued:
        result = cli("presets", "show", str(fifo))
    assert not rescued.is_set(), "the CLI blocked on the FIFO"
    error_line(result, 2, "swapped.toml: is a named pipe (FIFO), not a regular file")


def test_a_fifo_among_the_user_presets_is_listed_refused_and_deletable() -> None:
    fifo = user_presets() / "pipe.toml"
    os.mkfifo(fifo)
    with unblocked_after(fifo) as rescued:
        listing = cli("presets", "list")
        by_name = cli("run", "--print-config", "-p", "pipe")
    assert not rescued.is_set(), "the CLI blocked on the FIFO"
    assert listing.exit_code == 0, listing.output
    assert ["pipe", "user", "(unreadable)"] in [
        line.split() for line in listing.stdout.splitlines()
    ]
    error_line(by_name, 2, "pipe.toml: is a named pipe (FIFO)")  # not "unknown preset"
    assert cli("presets", "delete", "pipe").exit_code == 0
    assert not os.path.lexists(fifo)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: p.symlink_to("/dev/zero"), "a character device (through a symbolic link)"),
        (lambda p: p.symlink_to("/dev/null"), "a character device (through a symbolic link)"),
        (lambda p: p.mkdir(), "a folder"),
        (lambda p: p.symlink_to(p.parent), "a folder (through a symbolic link)"),
        (lambda p: socket.socket(socket.AF_UNIX).bind(p.name), "a socket"),
        (lambda p: p.symlink_to(p.parent / "gone.toml"), "is a broken symbolic link"),
    ],
    ids=["dev-zero", "dev-null", "folder", "link-to-folder", "socket", "dangling"],
)
def test_files_that_are_not_regular_files_are_refused_by_kind(
    make: Any, kind: str, isolated: Path
) -> None:
    path = isolated / "odd.toml"
    make(path)
    error_line(cli("run", "--print-config", "-p", "./odd.toml"), 2, "odd.toml: ", kind)


def test_a_preset_over_a_mebibyte_is_refused_without_reading_it(isolated: Path) -> None:
    big = isolated / "big.toml"
    big.write_text("# padding\n" * (untrusted.PRESET_LIMIT // 10 + 1))
    error_line(cli("presets", "show", str(big)), 2, "big.toml: is too large", "1048576")
    sparse = isolated / "sparse.toml"  # 64 GiB that take no disk: refused by its size alone
    with sparse.open("wb") as handle:
        handle.truncate(64 << 30)
    error_line(cli("presets", "show", str(sparse)), 2, "sparse.toml: is too large")


def test_a_file_growing_past_the_limit_while_read_is_cut_off(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size limit holds even when fstat's size is stale (a file appended to meanwhile)."""
    path = isolated / "growing.toml"
    path.write_text("# x\n" * 10)
    real = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real(fd, n) or b"#" * n)  # never ends
    error_line(cli("presets", "show", str(path)), 2, "growing.toml: is too large", "more than")


# --- class 2: legal but absurd TOML --------------------------------------------------------------

DEEP = {
    "arrays": "[kan]\ngrid_range = " + "[" * 3000 + "]" * 3000 + "\n",
    "inline_tables": "optim = " + "{a = " * 1000 + "1" + "}" * 1000 + "\n",
    "dotted_tables": "[" + ".".join(["optim"] * 1500) + "]\nx = 1\n",
    "dotted_keys": "description." + ".".join(["a"] * 1500) + " = 1\n",
    "just_too_deep": "[optim.lr_mult]\ncnn = " + "[" * 9 + "1" + "]" * 9 + "\n",
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_deeply_nested_toml_is_one_error_line(case: str, isolated: Path) -> None:
    path = isolated / f"{case}.toml"
    path.write_text(DEEP[case])
    line = error_line(
        cli("run", "--print-config", "-p", str(path)), 2, str(path), "nested more than"
    )
    assert len(line) < 300  # the path is named, not the structure


def test_a_deep_set_value_is_one_error_line() -> None:
    deep = "[" * 3000 + "]" * 3000
    error_line(cli("run", "--print-config", "--set", f"optim.lr={deep}"), 2, "--set: optim.lr:")
    error_line(cli("run", "--print-config", "--set", "kan.grid_range=" + "[" * 12 + "]" * 12), 2,
               "--set: kan.grid_range", "nested more than 8")  # fmt: skip


def test_an_integer_past_pythons_digit_limit_is_one_error_line(isolated: Path) -> None:
    path = isolated / "digits.toml"
    path.write_text("[train]\nepochs = " + "9" * 5000 + "\n")
    error_line(cli("run", "--print-config", "-p", str(path)), 2, str(path), "integer too long")
    line = error_line(cli("run", "--print-config", "--set", "train.epochs=" + "9" * 5000), 2)
    assert "--set: train.epochs:" in line and len(line) < 300  # the echo is cut short


def test_huge_values_are_echoed_short(isolated: Path) -> None:
    path = isolated / "long.toml"
    path.write_text(f'description = "{"x" * 500_000}"\n')
    line = error_line(
        cli("run", "--print-config", "-p", str(path)), 2, "description", "at most 200"
    )
    assert len(line) < 400


def numeric_keys() -> list[str]:
    """Every int / float / grid_range field of the schema, as a dotted key."""
    keys: list[str] = []

    def walk(model: type, prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")
            elif annotation in (int, float) or name == "grid_range":
                keys.append(f"{prefix}{name}")

    walk(RunConfig, "")
    return keys


def test_the_schema_walk_found_the_numbers() -> None:
    keys = numeric_keys()
    assert {"train.batch_size", "optim.lr", "optim.lr_mult.kan", "kan.grid_range"} <= set(keys)
    assert len(keys) > 25


@pytest.mark.parametrize("key", numeric_keys())
@pytest.mark.parametrize("value", ["true", "false"])
def test_booleans_are_not_numbers_anywhere(key: str, value: str) -> None:
    given = "[true, 2.0]" if key == "kan.grid_range" and value == "true" else value
    error_line(
        cli("run", "--print-config", "--set", f"{key}={given}"),
        2,
        f"--set: {key}: must be a number, not true or false",
    )


def test_batch_size_true_in_a_preset_names_the_file_and_the_key(isolated: Path) -> None:
    path = isolated / "bool.toml"
    path.write_text("[train]\nbatch_size = true\n")
    error_line(
        cli("run", "--print-config", "-p", str(path)),
        2,
        f"{path}: train.batch_size: must be a number, not true or false (got True)",
    )
    error_line(cli("run", "--print-config", "--epochs", "true"), 2, "--epochs: train.epochs")


def test_ints_still_count_for_floats_and_booleans_for_booleans() -> None:
    config = tomllib.loads(
        cli("run", "--print-config", "--set", "optim.lr=1", "--set", "data.augment=true").stdout
    )
    assert config["optim"]["lr"] == 1.0 and config["data"]["augment"] is True


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("[-1e300, 1e300]", "must lie within [-10000, 10000]"),
        ("[-1e5, 0]", "must lie within"),
        ("[0, 1e-30]", "is too narrow for 5 intervals"),
        ("[1000, 1000.001]", "is too narrow"),
        ("[2, -2]", "low < high"),
        ("[1, 1]", "low < high"),
        ("[0, inf]", "finite"),
        ("[nan, 1]", "finite"),
        ("[1]", "kan.grid_range"),
    ],
)
def test_absurd_grid_ranges_are_refused(value: str, reason: str) -> None:
    error_line(cli("run", "--print-config", "--set", f"kan.grid_range={value}"), 2,
               "--set: kan.grid_range", reason)  # fmt: skip


def test_a_range_too_narrow_for_its_grid_size_is_refused_whichever_sets_it() -> None:
    assert cli("run", "--print-config", "--set", "kan.grid_range=[0, 0.01]").exit_code == 0
    error_line(
        cli("run", "--print-config", "--set", "kan.grid_range=[0, 0.01]", "--set",
            "kan.grid_size=100"), 2,
        "kan.grid_range: is too narrow for 100 intervals",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("train.batch_size=1", "greater than or equal to 2"),
        ("kan.grid_size=1000", "less than or equal to 100"),
        ("train.device=cuda:\u0663", "must be auto, cpu, cuda, cuda:N or mps"),
        ("train.device=cuda:123456", "must be auto"),
        ('data.data_dir="a\\u0000b"', "NUL"),
        ('description="one\\nline"', "must be one line of printable text (holds \\n)"),
        ('description="\\u001b[2J"', "holds \\x1b"),
    ],
)
def test_values_that_could_not_train_are_refused(item: str, fragment: str) -> None:
    error_line(cli("run", "--print-config", "--set", item), 2, item.split("=")[0], fragment)


def test_nan_inputs_reach_the_loss_instead_of_crashing_the_layer() -> None:
    """A diverged layer below fed NaN to the eager basis, whose index cast then crashed the run
    (`index -9223372036854775808 is out of bounds`); now the NaN reaches the loss, where the
    trainer's divergence handling sees it."""
    layer = KANLinear(3, 2, grid_size=5)
    x = torch.tensor([[float("nan"), 0.5, float("inf")], [0.1, -0.2, 0.3]])
    out = layer(x)
    assert out[0].isnan().all() and out[1].isfinite().all()


def test_a_grid_update_far_from_a_narrow_range_stays_finite() -> None:
    """With no quadrature anchor inside a narrow current grid, ANCHOR_WEIGHT * n / tiny
    overflowed to inf and 0 * inf made every refit coefficient NaN."""
    torch.manual_seed(0)
    for grid_range in ((0.0, 0.1), (9.0, 10.0), (9950.0, 10000.0)):
        layer = KANLinear(8, 4, grid_size=5, grid_range=grid_range)
        layer.update_grid(torch.randn(128, 8), keep_range=True)
        assert layer.spline_weight.isfinite().all(), grid_range
        assert layer(torch.randn(16, 8)).isfinite().all(), grid_range


@pytest.mark.parametrize(
    ("sets", "learns"),
    [
        (["kan.grid_range=[0, 0.1]", "kan.grid_update_every=5"], 0.3),  # refits made NaN
        (["kan.grid_range=[9950, 10000]", "kan.grid_update_every=5"], 0.3),  # far from the data
        (["kan.grid_range=[-10000, 10000]", "kan.grid_size=1", "kan.spline_order=10"], 0.3),
        (["train.batch_size=1048576"], 0.0),  # larger than the data set: one step in all
    ],
    ids=["narrow", "far", "wide-order-10", "batch-over-data"],
)
def test_extreme_accepted_values_train(sets: list[str], learns: float, isolated: Path) -> None:
    args = [arg for item in sets for arg in ("--set", item)]
    result = cli("run", "--headless", *CLI_TINY, *args)
    assert result.exit_code == 0, result.output
    assert "non-finite" not in result.output, result.output
    (run_dir,) = (isolated / "out").iterdir()
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert summary["status"] == "finished"
    assert summary["best_val_acc"] > learns  # chance is 0.1: it learned, not just survived


# --- class 3: user text is shown escaped, never as markup ----------------------------------------


def test_presets_list_shows_a_hostile_description_escaped_on_one_line() -> None:
    (user_presets() / "evil.toml").write_text(f"description = {toml_string(HOSTILE)}\n")
    result = cli("presets", "list")
    assert result.exit_code == 0, result.output
    assert not any(char in result.stdout for char in RAW), repr(result.stdout)
    rows = [line for line in result.stdout.splitlines() if line.startswith("evil ")]
    assert len(rows) == 1, result.stdout  # no forged row
    assert rows[0].split(None, 2)[2].rstrip() == SHOWN
    assert not any(line.startswith("fake") for line in result.stdout.splitlines())


def test_loading_a_hostile_description_is_refused_with_an_escaped_echo() -> None:
    (user_presets() / "evil.toml").write_text(f"description = {toml_string(HOSTILE)}\n")
    for args in (["presets", "show", "evil"], ["run", "--print-config", "-p", "evil"]):
        error_line(cli(*args), 2, "evil.toml: description: must be one line", r"\x1b]0;pwned")


def test_a_path_with_escapes_is_named_escaped_in_the_error(isolated: Path) -> None:
    name = "x\x1b]0;pwned\x07[red]y[bold].toml"
    (isolated / name).write_text("[train]\nepochs = 0\n")
    error_line(cli("run", "--print-config", "-p", f"./{name}"), 2, r"x\x1b]0;pwned\x07[red]y[bold]")


def test_printed_toml_escapes_what_tomli_w_leaves_raw() -> None:
    """C1 controls, bidi overrides and line separators in a path: `presets show` / the run's
    config.toml hold them as \\uXXXX, which reads back to the same value."""
    data_dir = "data\x9b2J\u202eevil\u2028x\x1b"
    result = cli("run", "--print-config", "--set", f"data.data_dir={toml_string(data_dir)}")
    assert result.exit_code == 0, result.output
    assert not any(char in result.stdout for char in RAW), repr(result.stdout)
    assert tomllib.loads(result.stdout)["data"]["data_dir"] == data_dir


def make_run_folder(out: Path, name: str, **summary: Any) -> Path:
    run_dir = out / name
    (run_dir / runs.CHECKPOINTS).mkdir(parents=True)
    runs.write_config(run_dir, RunConfig())
    runs.write_summary(run_dir, {"status": "finished", **summary})
    return run_dir


def test_runs_list_shows_folder_names_and_summaries_escaped(isolated: Path) -> None:
    make_run_folder(
        isolated / "runs",
        "20250101-100000-x\x1b[2J[bold red]y",
        preset="p\x1b]0;t\x07[link=http://e.vil]z[/link]",
        model="m\r\nfake row",
    )
    result = cli("runs", "list")
    assert result.exit_code == 0, result.output
    assert not any(char in result.stdout for char in RAW), repr(result.stdout)
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("2025")]
    assert r"m\r\nfake row" in row and r"x\x1b[2J[bold red]y" in row


def test_the_headless_log_escapes_notices() -> None:
    """Notices quote user data (CSV headers, class folders): escaped and not markup."""
    buffer = io.StringIO()
    reporter = HeadlessReporter(Console(file=buffer, width=200), interactive=False)
    reporter(Notice("column 'a\x1b[2J\rb' [bold]kept[/] \u202e", "warning"))
    assert buffer.getvalue() == "warning: column 'a\\x1b[2J\\rb' [bold]kept[/] \\u202e\n"


def test_printable_escapes_every_control_and_nothing_else() -> None:
    controls = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0))]
    for char in controls:
        shown = untrusted.printable(char)
        assert shown.startswith("\\") and shown.isprintable(), repr(char)
    text = "Zürich 東京 naïve \\ [x] – ok"
    assert untrusted.printable(text) == text
    assert untrusted.printable("a\udcffb") == r"a\xffb"  # a non-UTF-8 byte of a file name
    assert untrusted.printable("a\nb\tc", keep_newlines=True) == "a\nb\\tc"


# --- class 3: the TUI ----------------------------------------------------------------------------


@pytest.fixture
def tui(monkeypatch: pytest.MonkeyPatch) -> None:
    fix_memory_estimate(monkeypatch)


def test_the_form_shows_typed_markup_literally(tui: None) -> None:
    """Typing `[/]` into a number field crashed the app (Textual read the reason as markup)."""

    async def drive() -> None:
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup")
            for typed in ("[/]", "[bold red]x[/]", "[link=http://e.vil]y[/link]"):
                await type_into(pilot, "optim.lr", typed)
                reason = app.screen.query_one("#field-optim-lr .field-reason", Static)
                assert typed.replace(" ", "") in unwrapped(reason), visible_text(reason)
                status = app.screen.query_one("#form-status", Static)
                assert "cannot start" in visible_text(status)
            assert isinstance(app.screen, SetupScreen)  # still running

    asyncio.run(drive())


def test_the_preset_list_loads_hostile_presets_with_escaped_reasons(tui: None) -> None:
    folder = user_presets()
    (folder / "evil.toml").write_text(f"description = {toml_string(HOSTILE)}\n")
    fifo = folder / "pipe.toml"
    os.mkfifo(fifo)

    async def drive() -> None:
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: isinstance(app.screen, SetupScreen), "setup")
            presets = app.screen.query_one(PresetList)
            panel = app.screen.query_one("#preset-error", Static)
            assert {"evil", "pipe"} <= set(presets.presets)
            for name, fragment in (("evil", r"\x1b]0;pwned"), ("pipe", "namedpipe(FIFO)")):
                presets.focus()
                presets.highlighted = presets.get_option_index(name)
                await pilot.press("enter")
                await wait_until(pilot, lambda: panel.display, f"the reason for {name}")
                shown = visible_text(panel)
                assert fragment in unwrapped(panel), shown
                assert not any(char in shown for char in RAW), repr(shown)
            assert app.screen.preset_name == "lite"  # the form kept the last good preset

    with unblocked_after(fifo) as rescued:
        asyncio.run(drive())
    assert not rescued.is_set(), "the TUI blocked on the FIFO"


def test_apply_overrides_keeps_working_for_the_tui_form() -> None:
    """The form validates each keystroke through parse_value + apply_overrides: absurd text is
    a reason, never an exception."""
    for text in ("[" * 5000, "[" * 3000 + "]" * 3000, "9" * 5000, "1\nx = 2"):
        value = parse_value(text)
        with pytest.raises(ConfigError, match="optim.lr"):
            apply_overrides(RunConfig(), {"optim.lr": value}, "form")

"""Gaps a hostile / careless-user audit of the `kan-tui` CLI found, one test per class of problem.

Every bad input must end in exit 2 with one `error:` line naming the source and the reason, no
traceback, and nothing half-made: a run folder that cannot be written is refused before training,
not after an epoch; a path of the wrong kind is named by its kind, not as "missing".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_of, error_line, module_home
from typer.testing import CliRunner, Result

from kan_tui.cli import app


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_home(tmp_path_factory, "audit") as home:
        yield home


@pytest.fixture(scope="module")
def base_run(env: Path) -> Path:
    """One real run: the function preset (a [2, 5, 1] flat KAN), one epoch, about a second."""
    result = cli("run", "--headless", "--preset", "function", "--epochs", "1", "--out", env / "r")
    assert result.exit_code == 0, result.output
    (run_dir,) = (env / "r").iterdir()
    return run_dir


@pytest.fixture
def run_dir(base_run: Path, tmp_path: Path) -> Path:
    return copy_of(base_run, tmp_path)


# what is put where a regular file belongs, and how the error names it
NOT_FILES = {
    "folder": (lambda p: p.mkdir(), "is a folder, not a regular file"),
    "fifo": (lambda p: os.mkfifo(p), "is a named pipe (FIFO), not a regular file"),
    "device_link": (lambda p: p.symlink_to("/dev/zero"), "is a character device (through a"),
    "broken_link": (lambda p: p.symlink_to(p.parent / "gone"), "is a broken symbolic link"),
}


@pytest.mark.parametrize("command", ["eval", "inspect"])
@pytest.mark.parametrize("case", sorted(NOT_FILES))
def test_a_checkpoint_that_is_no_file_is_named_by_its_kind(
    command: str, case: str, run_dir: Path
) -> None:
    """Not "checkpoint missing": the file is there, it is something else."""
    make, reason = NOT_FILES[case]
    best = run_dir / "checkpoints" / "best.pt"
    best.unlink()
    make(best)
    error_line(cli(command, run_dir), 2, f"{best}: {reason}")


def test_a_config_toml_that_is_a_folder_is_named_so(run_dir: Path) -> None:
    config = run_dir / "config.toml"
    config.unlink()
    config.mkdir()
    for command in ("eval", "resume", "symbolic"):
        error_line(cli(command, run_dir), 2, f"{config}: is a folder, not a regular file")


@pytest.mark.parametrize("command", ["eval", "resume", "inspect", "attribution"])
def test_a_run_dir_that_is_no_folder_says_which(command: str, tmp_path: Path) -> None:
    """A typo and a file given as RUN_DIR: said as such (inspect, which reads the checkpoint
    alone, used to name `FILE/checkpoints/best.pt` as a missing checkpoint)."""
    missing, a_file = tmp_path / "nowhere", tmp_path / "notes.txt"
    a_file.write_text("hi")
    error_line(cli(command, missing), 2, f"{missing}: not a run folder (no such folder)")
    error_line(cli(command, a_file), 2, f"{a_file}: not a run folder (it is a file)")


def folder_for(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


def file_for(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("")


# what is put in a place a resume writes, and the start of the error's reason
UNWRITABLE = {
    "summary.json": (folder_for, "it exists and is a folder"),
    "checkpoints/best.pt": (folder_for, "it exists and is a folder"),
    "checkpoints": (file_for, "is not a folder"),
}


@pytest.mark.parametrize("place", sorted(UNWRITABLE))
def test_resume_refuses_before_training_what_it_could_not_write(place: str, run_dir: Path) -> None:
    """Without last.pt the run starts over; with a folder where a file it writes belongs (or a
    file for checkpoints/) it used to train an epoch, then fail with exit 1 and a `failed`
    summary. Now: exit 2 at once, and the log as it was."""
    (run_dir / "checkpoints" / "last.pt").unlink()
    damage, reason = UNWRITABLE[place]
    damage(run_dir / place)
    log = (run_dir / "metrics.jsonl").read_bytes()
    error_line(cli("resume", "--headless", run_dir), 2, f"{run_dir / place}: {reason}")
    assert (run_dir / "metrics.jsonl").read_bytes() == log


def test_prune_of_a_folder_named_with_an_escape(run_dir: Path, tmp_path: Path) -> None:
    """The pruned run's description quotes the source folder's name: escaped, so the schema
    takes it, and the name is shown escaped on the terminal."""
    hostile = run_dir.rename(run_dir.with_name("run\x1b[2J"))
    result = cli("prune", hostile, "-t", "0.01", "--epochs", "0", "--out", tmp_path / "pruned")
    assert result.exit_code == 0, result.output
    assert "run\\x1b[2J" in result.stdout and "\x1b" not in result.output
    (pruned,) = (tmp_path / "pruned").iterdir()
    config = (pruned / "config.toml").read_text()
    assert "from run\\\\x1b[2J" in config  # the TOML string holds the escape as text


# Ctrl-C while the CLI is still being imported: a signal at the right tenth of a second, made
# deterministic by an import that raises KeyboardInterrupt as the signal handler would
CTRL_C_WHILE_IMPORTING = """
import builtins, runpy, sys
real = builtins.__import__
def interrupted(name, *args, **kwargs):
    if name == "pydantic":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupted
sys.argv = ["kan-tui", "run", "--print-config"]
runpy.run_module("kan_tui", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_while_the_cli_imports_is_exit_130_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n"
    assert done.stdout == "" and not list(tmp_path.iterdir())


def test_runs_list_of_a_file_is_refused_and_of_a_typo_says_so(tmp_path: Path) -> None:
    """`--out FILE` answered "no runs in FILE" and exit 0, as if it were an empty folder."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("hi")
    error_line(cli("runs", "list", "--out", a_file), 2, f"--out: {a_file} exists and is not a")
    missing = cli("runs", "list", "--out", tmp_path / "nowhere")
    assert missing.exit_code == 0
    assert missing.stdout.strip() == f"no runs in {tmp_path / 'nowhere'} (no such folder)"


def test_runs_list_of_a_folder_it_may_not_read_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No permission to list a folder (root reads anything, so it is simulated) is a skipped
    line naming it, not a traceback."""
    locked = tmp_path / "runs" / "locked"
    locked.mkdir(parents=True)
    real = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    result = cli("runs", "list", "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert f"skipped {locked}: {locked}: cannot list: Permission denied" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--headless", "--preset", "function", "--epochs", "1", "--out", ""],
        ["runs", "list", "--out", " "],
        ["runs", "export", "RUN", "--csv", ""],
        ["predict", "RUN", "test", "--out", ""],
        ["export", "RUN", "--format", "safetensors", "--out", ""],
        ["prune", "RUN", "-t", "0.01", "--epochs", "0", "--out", ""],
        ["compare", "--preset", "function", "--models", "flat_kan", "--json", ""],
        ["eval", ""],
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    args: list[str], base_run: Path, isolated: Path
) -> None:
    """`--out "$UNSET"` was Path(""): the current folder got the run, or an error named "."."""
    result = cli(*[str(base_run) if arg == "RUN" else arg for arg in args])
    assert result.exit_code == 2, result.output
    assert "is empty (an unset shell variable?)" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in isolated.iterdir()) == []


def test_compare_with_an_empty_models_list_trains_nothing(isolated: Path) -> None:
    """`--models ""` was taken for no --models: the default comparison, four full trainings."""
    result = cli("compare", "--preset", "function", "--models", "", "--out", "runs")
    error_line(result, 2, "--models: model.name: no model given")
    assert not (isolated / "runs").exists()


def test_inspect_refuses_a_bad_edge_before_printing_anything(base_run: Path) -> None:
    """The layer's header and grid line used to be printed, then the error."""
    result = cli("inspect", base_run, "--edge", "9", "9")
    error_line(result, 2, "--edge: 9 9: no such edge")
    assert result.stdout == ""


LONG = "a" * 5000


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--print-config", "-p", LONG],
        ["presets", "save", LONG],
        ["run", "--print-config", "--set", f"{LONG}=1"],
        ["compare", "--models", LONG],
        ["inspect", "RUN", "--layer", LONG],
    ],
)
def test_a_huge_name_or_key_is_echoed_short(args: list[str], base_run: Path) -> None:
    """Names and keys the user typed were echoed whole: a 5000-character error line."""
    result = cli(*[str(base_run) if arg == "RUN" else arg for arg in args])
    line = error_line(result, 2, "aaa")
    assert len(line) < 400, len(line)


@pytest.mark.parametrize(("name", "reason"), [("nowhere.pt", "checkpoint missing"),
                                              ("notes.txt", "damaged")])  # fmt: skip
def test_a_bad_init_from_names_the_key_and_keeps_no_run(
    name: str, reason: str, isolated: Path
) -> None:
    (isolated / "notes.txt").write_text("not weights")
    start = f"model.init_from={isolated / name}"
    result = cli("run", "--headless", "--preset", "function", "--set", start, "--out", "runs")
    error_line(result, 2, f"model.init_from: {isolated / name}: {reason}")
    assert not (isolated / "runs").exists()  # made for the refused run: removed with it


def test_weights_that_do_not_fit_name_the_run_s_model_not_a_deleted_file(
    base_run: Path, isolated: Path
) -> None:
    """The error named the new run's config.toml, deleted with the refused run."""
    start = f"model.init_from={base_run / 'checkpoints' / 'best.pt'}"
    result = cli("run", "--headless", "--preset", "function", "--set", start,
                 "--set", "model.width=[2, 3, 1]", "--out", "runs")  # fmt: skip
    line = error_line(result, 2, "does not fit this run's model (model.init_from)")
    assert "config.toml" not in line and not (isolated / "runs").exists()


def test_the_bare_command_outside_a_terminal_is_refused_not_hung(isolated: Path) -> None:
    """`kan-tui > log` (or from cron) opened the TUI: escape codes into the file, then a wait
    for keys that never come. CliRunner's stdin and stdout are not terminals."""
    result = cli("--no-mouse")
    line = error_line(result, 2, "the terminal UI needs a terminal", "kan-tui run --headless")
    assert result.stdout == "" and "\x1b" not in line


NAME_TOO_LONG = "b" * 300  # one path component past every file system's 255 bytes


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--headless", "--preset", "function", "--out", NAME_TOO_LONG],
        ["predict", "RUN", "test", "--out", f"{NAME_TOO_LONG}.csv"],
        ["export", "RUN", "--format", "safetensors", "--out", f"{NAME_TOO_LONG}.safetensors"],
        ["eval", NAME_TOO_LONG],
        ["inspect", NAME_TOO_LONG],
    ],
)
def test_a_name_too_long_is_one_error_line(args: list[str], base_run: Path, isolated: Path) -> None:
    """ENAMETOOLONG from any check of the path was a traceback and exit 1."""
    result = cli(*[str(base_run) if arg == "RUN" else arg for arg in args])
    line = error_line(result, 2, "bbb...bbb", "(3", "characters): File name too long")
    assert len(line) < 250
    assert list(isolated.iterdir()) == []


def test_presets_save_where_the_folder_name_is_too_long(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAN_TUI_CONFIG", str(isolated / NAME_TOO_LONG))
    error_line(cli("presets", "save", "mine", "--from", "cpu"), 2, "File name too long")


def test_a_run_dir_that_is_a_broken_link_says_so(tmp_path: Path) -> None:
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    error_line(cli("eval", link), 2, f"{link}: not a run folder (a broken symbolic link)")


def _export_interrupted_inside_a_library(*args: object, **kwargs: object) -> None:
    """What torch's ONNX exporter did with a Ctrl-C during one of its lazy imports."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")  # noqa: B904
    except AttributeError as exc:
        raise RuntimeError("Failed to export the model with torch.export") from exc


def test_a_ctrl_c_a_library_turned_into_its_own_error_is_an_interruption(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kan_engine import export

    monkeypatch.setattr(export, "export", _export_interrupted_inside_a_library)
    out = run_dir / "model.safetensors"
    result = cli("export", run_dir, "--format", "safetensors", "--out", out)
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "interrupted" and not out.exists()


def test_only_a_ctrl_c_in_the_chain_counts_as_one() -> None:
    from kan_engine.errors import interrupted

    def raised(make: object) -> BaseException:
        try:
            make()  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 (the test inspects what was raised)
            return exc
        raise AssertionError("nothing raised")

    assert interrupted(raised(lambda: _export_interrupted_inside_a_library()))
    assert not interrupted(RuntimeError("a plain failure"))

    def converted_on_purpose() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("handled, context suppressed") from None

    assert not interrupted(raised(converted_on_purpose))

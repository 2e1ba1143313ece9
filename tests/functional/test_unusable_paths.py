"""Paths that cannot be used, through the real CLI (issue 15): one `error:` line, exit 2, nothing
made or replaced. Special files are made in the test's own folder (never the system's)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import error_line
from typer.testing import CliRunner, Result

from kan_engine import atomic
from kan_tui.cli import app

RUN = ["run", "--headless", "--dataset", "digits", "--model", "kan", "--epochs", "1",
       "--device", "cpu"]  # fmt: skip


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_out_under_a_file_is_refused_before_anything_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    error_line(cli(*RUN, "--out", str(blocker / "runs")), 2, str(blocker), "Not a directory")
    assert blocker.read_text() == "mine"


def test_out_on_a_read_only_place_is_refused(tmp_path: Path) -> None:
    """A read-only mount (as root, who writes into any read-only folder) or folder."""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(locked)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip("root, and no read-only tmpfs can be mounted here")
    else:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        error_line(cli(*RUN, "--out", str(locked / "runs")), 2, "cannot create a run folder")
        assert not (locked / "runs").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=False)
        locked.chmod(stat.S_IRWXU)


@pytest.fixture
def special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, a folder, a symlink and (as root) a character device like /dev/full, all ours."""
    made = {"fifo": tmp_path / "fifo", "folder": tmp_path / "folder", "link": tmp_path / "link"}
    os.mkfifo(made["fifo"])
    made["folder"].mkdir()
    (tmp_path / "target.csv").write_text("kept\n")
    made["link"].symlink_to(tmp_path / "target.csv")
    if os.geteuid() == 0:
        made["device"] = tmp_path / "full"
        os.mknod(made["device"], stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers
    return made


def test_atomic_writes_never_replace_what_is_not_a_regular_file(special_files) -> None:
    for kind, path in special_files.items():
        mode = os.lstat(path).st_mode
        with pytest.raises(atomic.NotRegularFileError, match="not a regular file"):
            atomic.write_text(path, "ours")
        assert os.lstat(path).st_mode == mode, kind  # still the same kind of file
        assert not list(path.parent.glob(f".*{atomic.TEMP_SUFFIX}"))
    assert (special_files["link"].parent / "target.csv").read_text() == "kept\n"


def test_runs_export_to_a_special_file_is_refused(tmp_path: Path, special_files) -> None:
    out = tmp_path / "runs"
    assert cli(*RUN, "--out", str(out)).exit_code == 0
    (run_dir,) = out.iterdir()
    for path in special_files.values():
        mode = os.lstat(path).st_mode
        error_line(cli("runs", "export", str(run_dir), "--csv", str(path)), 2, str(path))
        assert os.lstat(path).st_mode == mode


def test_presets_delete_and_save_in_a_read_only_folder(isolated: Path) -> None:
    presets = isolated / "config" / "presets"
    assert cli("presets", "save", "mine", "--from", "lite").exit_code == 0
    if os.geteuid() == 0:
        bound = subprocess.run(["mount", "--bind", str(presets), str(presets)], check=False)
        ro = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(presets)], capture_output=True, check=False
        )
        if bound.returncode or ro.returncode:
            subprocess.run(["umount", str(presets)], check=False)
            pytest.skip("root, and no read-only bind mount can be made here")
    else:
        presets.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        error_line(cli("presets", "delete", "mine"), 2, "mine.toml", "cannot delete")
        error_line(cli("presets", "save", "other", "--from", "lite"), 2, "other.toml")
        assert (presets / "mine.toml").is_file() and not (presets / "other.toml").exists()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(presets)], check=False)
        presets.chmod(stat.S_IRWXU)

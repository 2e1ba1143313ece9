"""A really full file system (a 320 KiB tmpfs this test mounts), through the real CLI.

tests/functional/test_reliability.py makes single writes fail with ENOSPC; here the kernel runs out
of space the way a real disk does, which is where torch's checkpoint writer raises a C++
RuntimeError instead of an OSError (issue 15). Needs root and tmpfs: skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kan_tui.cli import app

SIZE = "320k"  # room for config.toml, metrics.jsonl and summary.json, not for a checkpoint


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_file(tiny_disk: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["run", "--headless", "--dataset", "digits", "--model", "kan", "--epochs", "1",
         "--device", "cpu", "--batch-size", "128", "--out", str(tiny_disk)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "inline_container" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert ".pt: cannot write checkpoint: No space left on device" in errors[0]
    (run_dir,) = tiny_disk.iterdir()
    assert not list(run_dir.rglob(".*.tmp"))  # the temporary file is gone
    assert (run_dir / "summary.json").is_file()  # what was written before is intact

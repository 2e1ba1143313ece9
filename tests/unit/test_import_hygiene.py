"""`kan-tui --help` must be instant and a headless run must not need the TUI.

Checked in fresh interpreters, since this test session has long imported everything: importing the
CLI pulls in neither torch nor textual, and a real `run --headless` never imports textual.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "textual")


def fresh_python(code: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_help_and_version_import_neither_torch_nor_textual() -> None:
    code = (
        "import sys\n"
        "from kan_tui.cli import app\n"
        "for args in (['--help'], ['run', '--help'], ['presets', '--help'],\n"
        "             ['predict', '--help'], ['export', '--help'], ['--version']):\n"
        "    assert app(args, standalone_mode=False) in (None, 0), args\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert fresh_python(code) == "[]"


def test_commands_that_need_no_model_import_neither_torch_nor_textual(tmp_path: Path) -> None:
    """Presets, the resolved config and the run list read and write TOML and JSON only: they
    must not wait seconds for torch (issue 16). Each command runs in one fresh interpreter."""
    code = (
        "import os, sys\n"
        f"os.environ['KAN_TUI_CONFIG'] = {str(tmp_path / 'config')!r}\n"
        "from kan_tui.cli import app\n"
        "commands = [['presets', 'list'], ['presets', 'show', 'lite'], ['presets', 'path'],\n"
        "            ['presets', 'save', 'mine', '--from', 'lite', '--set', 'optim.lr=0.002'],\n"
        "            ['presets', 'delete', 'mine'], ['run', '--print-config', '--lr', '0.01'],\n"
        f"            ['runs', 'list', '--out', {str(tmp_path / 'runs')!r}]]\n"
        "for args in commands:\n"
        "    assert app(args, standalone_mode=False) in (None, 0), args\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert fresh_python(code) == "[]"


def test_the_installed_command_answers_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kan_tui", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "Usage: kan-tui" in result.stdout


@pytest.mark.slow
def test_headless_run_never_imports_textual(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from kan_tui.cli import app\n"
        "code = app(['run', '--headless', '--dataset', 'digits', '--model', 'kan', '--epochs', '1',"
        " '--warmup-epochs', '0', '--batch-size', '256', '--device', 'cpu', '--out', 'out'],"
        " standalone_mode=False)\n"
        "print(code, 'textual' in sys.modules, 'torch' in sys.modules)\n"
    )
    assert fresh_python(code, cwd=tmp_path) == "0 False True"
    assert list((tmp_path / "out").iterdir())

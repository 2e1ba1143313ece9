"""The README's library example runs as printed (the code is read from README.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_library_example_runs(isolated: Path) -> None:
    section = README.read_text().split("### Library use", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=isolated
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"epoch 1: val acc \d+\.\d\d%", lines[0]), lines
    assert lines[1].startswith("epoch 2: val acc "), lines
    assert lines[-1].startswith(("finished ", "early_stopped "))
    assert (isolated / "runs").is_dir()


def test_the_package_names_do_not_import_torch_until_used() -> None:
    code = "import sys, kan_engine.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr

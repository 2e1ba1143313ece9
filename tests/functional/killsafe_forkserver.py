"""Fork server for test_killsafe.py: `python -m kan_tui` without paying Python's start-up each time.

Starting Python and importing torch takes several seconds; the kill test needs many processes. This
script imports the CLI, the trainer and the data loader once, then for each JSON list of arguments
read from stdin forks a child that runs `kan_tui` as `python -m kan_tui ARGS` would (runpy, the
same `__main__`). It prints `pid N` (before the child may print anything), lets the child's output
go straight to its own stdout, and prints `exit CODE` (negative: killed by that signal) when the
child is gone. Children run one at a time, so their lines never interleave.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

import sklearn.datasets  # noqa: F401  (the digits loader: imported once, here)
import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is built)

import kan_engine.trainer  # noqa: F401  (torch and the engine)
import kan_tui.cli  # noqa: F401
import kan_tui.headless  # noqa: F401


def child(args: list[str]) -> None:
    sys.argv = ["kan-tui", *args]
    code = 0
    try:
        runpy.run_module("kan_tui", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no parent clean-up in the child


def main() -> None:
    for line in sys.stdin:
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            os.read(go_read, 1)  # returns at EOF: once the parent has printed the pid
            os.close(go_read)
            child(json.loads(line))
        os.close(go_read)
        print(f"pid {pid}", flush=True)
        os.close(go_write)
        _, status = os.waitpid(pid, 0)
        # on a line of its own even if a kill cut the child's last line short
        print(f"\nexit {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    main()

"""The exit codes of `kan-tui`, for the CLI, the headless runner and the TUI alike.

0 a run that finished or stopped early; 1 a run that diverged or failed (and an LR range test
that found no LR); 2 bad usage, preset, config, data or run folder (one `error:` line); 128 + the
signal's number for a run stopped by a signal after writing `last.pt`: 130 Ctrl-C, 129 SIGHUP,
143 SIGTERM, as shells report a process that a signal ended.
"""

from __future__ import annotations

import signal

OK = 0
FAILED = 1
USAGE = 2
INTERRUPTED = 128 + signal.SIGINT

# summary.json status -> exit code; "stopped" only happens on a signal (`for_signal`)
BY_STATUS = {"finished": OK, "early_stopped": OK, "diverged": FAILED, "failed": FAILED}


def for_signal(signum: int) -> int:
    """The exit code of a run that the signal `signum` stopped."""
    return 128 + signum


def for_status(status: str) -> int:
    """The exit code of a run that ended with this summary status (unknown ones: failed)."""
    return BY_STATUS.get(status, FAILED)

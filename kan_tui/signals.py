"""Which signals stop a run, and the handlers the headless run installs for them.

A dropped terminal (an SSH session gone) sends SIGHUP, a scheduler, torchrun or `kill` SIGTERM:
both stop a run as `q` in the TUI does (finish the step, write `last.pt` and the `stopped`
summary) and the process exits 128 + the signal's number (`exit_codes.for_signal`). Ctrl-C is
the trainer's own business (kan_engine.trainer): the first one stops the same way, then raises
KeyboardInterrupt. SIGHUP does not exist on Windows, and signals can only be handled on the main
thread. The TUI installs its handlers on its event loop (kan_tui.app) for `STOP_SIGNALS` too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGTERM") if hasattr(signal, name)
)


class Stoppable(Protocol):
    """The part of the trainer a headless run needs (kan_engine.trainer.Trainer)."""

    def run(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


@contextlib.contextmanager
def handling(signals: Iterable[int | str], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for the signals inside the block (numbers, or names: those this platform lacks
    are skipped), the previous handlers after it."""
    numbers = (getattr(signal, s, None) if isinstance(s, str) else s for s in signals)
    handled = [signum for signum in numbers if signum is not None]
    previous = {signum: signal.signal(signum, handler) for signum in handled}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stop_on_signals(trainer: Stoppable, *, quiet: bool = False) -> Iterator[list[int]]:
    """SIGHUP / SIGTERM: `trainer.stop()`, a second one: KeyboardInterrupt. Yields those caught.
    `quiet`: no "stopping" line (torchrun signals every rank; rank 0 says it for all)."""
    caught: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)
        trainer.stop()
        if not quiet:  # os.write, not print: this may interrupt Rich's own printing
            os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step\n".encode())

    with handling(STOP_SIGNALS, handler):
        yield caught


def ignore_late_signals() -> None:
    """Once the run has saved its state and summary, Ctrl-C (and SIGTERM / SIGHUP) during the
    interpreter's shutdown (torch's exit hooks take a moment) would only print a traceback or
    abort mid-cleanup: there is nothing left to stop, so they are ignored from here on."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, *STOP_SIGNALS):
        signal.signal(signum, signal.SIG_IGN)

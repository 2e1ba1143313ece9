"""Pause, resume, stop and checkpoint requests from any thread, and Ctrl-C as a stop.

The TUI calls these from its own thread, the headless runner from a signal handler; the loop
reads the flags between steps only, so a control never interrupts a step and the loop never waits
on the caller. Under torchrun a stop set on any rank (a signal, rank 0's sink) must end every rank
at the same step: `stop_agreed` combines the flags at the loop's agreed points only (logging steps
and epoch starts), one small collective each.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from kan_engine.distributed import Dist


class Controls:
    """Thread-safe flags the loop serves between steps."""

    def __init__(self) -> None:
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._checkpoint_now = threading.Event()
        self._wake = threading.Event()
        self.interrupted = False  # a Ctrl-C became a stop: the run re-raises it at the end

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    @property
    def stopping(self) -> bool:
        """This process's stop flag (see `stop_agreed` for the one every rank acts on)."""
        return self._stop.is_set()

    def pause(self) -> None:
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_checkpoint(self) -> None:
        self._checkpoint_now.set()
        self._wake.set()

    def take_checkpoint_request(self) -> bool:
        """True once per request (the flag is cleared)."""
        if not self._checkpoint_now.is_set():
            return False
        self._checkpoint_now.clear()
        return True

    def wait_while_paused(self, serve_checkpoint: Callable[[], None]) -> None:
        """Block until resumed or stopped, serving checkpoint requests meanwhile."""
        while True:
            self._wake.clear()  # flags are read after clearing, so no wake-up is lost
            serve_checkpoint()
            if not self._pause.is_set() or self._stop.is_set():
                return
            self._wake.wait()

    def stop_agreed(self, dist: Dist, agreed_point: bool) -> bool:
        """Whether to leave the loop now. One process: its own flag. Under torchrun every rank
        must leave at the same step, so the flags are combined at `agreed_point`s only."""
        if not dist.enabled:
            return self._stop.is_set()
        if not agreed_point:
            return False
        return dist.any(self._stop.is_set())

    @contextlib.contextmanager
    def sigint_as_stop(self) -> Iterator[None]:
        """On the main thread, a first Ctrl-C becomes `stop()` (the step finishes, last.pt is
        written); a second one raises KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            self.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

"""One process trains in a run folder at a time: an exclusive `fcntl.flock` on `<run>/run.lock`.

Two processes training one folder (two `resume`s, a `resume` of the run the TUI is training) would
both append to metrics.jsonl and replace each other's checkpoints, so the log would hold every
epoch twice and last.pt whichever wrote last. `Trainer.run` therefore holds this lock for the whole
training (`run`, `resume` and the TUI alike); a second process is refused at once with one line
naming the folder, instead of waiting.

The lock is advisory (only kan-tui asks for it) and belongs to the open file, not to the file's
existence: the kernel drops it when the process ends, however it ends, so a kill -9, an OOM kill
or a power cut leaves no stale lock behind and there is nothing to clean up. The file is never
deleted (deleting it while another process opens it would let two processes lock two different
files); it holds the holder's pid, for the refusal message only. Without `fcntl` (Windows) no lock
is taken.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from kan_engine.errors import KanError, RunDirError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks through fcntl
    fcntl = None  # type: ignore[assignment]

LOCK = "run.lock"


class RunLockedError(KanError):
    """Another process holds the run folder's lock (it is training in that folder)."""


class RunLock:
    """`with RunLock(run_dir):` holds the folder's lock; `acquire` raises RunLockedError."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock without waiting. Refuses a `run.lock` that is not a regular file (a
        symlink is not followed), so the lock never writes through a link planted there."""
        if self._fd is not None or fcntl is None:
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            reason = "it is a symlink (not followed)" if exc.errno == errno.ELOOP else _reason(exc)
            raise RunDirError(f"{self.path}: cannot open the run lock: {reason}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunDirError(f"{self.path}: not a regular file, so it cannot be the run lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                raise RunLockedError(
                    f"{self.run_dir}: another kan-tui process{holder} is training in this run "
                    "folder; wait for it to end (or stop it) and try again"
                ) from None
            with contextlib.suppress(OSError):  # the pid is information only
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Unlock (closing the file unlocks it); the file stays (see the module docstring)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[RunLock]:
    """The lock of `run_dir` for the duration of a `with` block."""
    with RunLock(run_dir) as lock:
        yield lock


def _holder(fd: int) -> str:
    """` (pid N)` from the lock file, or "" when it holds nothing readable."""
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return f" (pid {int(text)})"
    return ""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)

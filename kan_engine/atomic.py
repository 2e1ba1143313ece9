"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Presets, checkpoints and run summaries are written to a temporary file in the same folder, flushed
and fsynced, then renamed over the target (`os.replace` is atomic on POSIX and Windows). If writing
fails (a full disk), the temporary file is removed and the previous file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"  # temporary files are `.<name>.<random>.tmp` beside their target


class NotRegularFileError(OSError):
    """The target exists and is not a regular file (a device, a FIFO, a folder, a symlink)."""


def check_replaceable(path: Path) -> None:
    """Raise NotRegularFileError unless `path` is absent or a regular file (not followed).

    Only regular files are ever replaced: renaming over `/dev/full`, a FIFO or a symlink would
    swap a system file or a link the user made for a regular file of ours.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(mode)
            else "a symlink"
            if stat.S_ISLNK(mode)
            else ("a special file (device, FIFO or socket)")
        )
        raise NotRegularFileError(
            errno.EEXIST, f"it exists and is {kind}, not a regular file: not replaced", str(path)
        )


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file object; on clean exit it replaces `path`, on error it vanishes.
    A `path` that exists and is not a regular file is refused before anything is written."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        check_replaceable(path)  # it may have appeared while we wrote
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_with(path: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """For writers that take a file object, such as `torch.save`."""
    with atomic_open(path) as handle:
        writer(handle)


def remove_leftovers(folder: Path) -> None:
    """Delete temporary files that a killed process left in `folder` (a kill -9 runs no cleanup).

    Only for folders that no other process is writing to at the same time.
    """
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

"""The run folder: one per run, everything a script or a resume needs.

    <out>/<YYYYmmdd-HHMMSS>-<preset>/
        config.toml        the resolved config, loadable as a preset
        metrics.jsonl      one event per line (`Event.to_record()`), flushed as written
        summary.json       status and headline numbers, rewritten atomically
        checkpoints/last.pt, checkpoints/best.pt
        checkpoints/init.pt  the weights a run starts from, where it has its own
                             (`model.init_from`: a pruned run, kan-tui prune)
        run.lock           held by the process training in the folder (`run_lock.py`)

`metrics.jsonl` is append-only while a run lives; every line goes to the OS in one write (not
fsynced: a kill -9 loses at most the line being written, the OS keeps the rest), and a write that
fails (a full disk) is cut off again, so the file never holds half a line before a whole one. A
resume truncates it back to the byte offset recorded in the checkpoint it continues from, so no
epoch row appears twice (`truncate_metrics`). Non-finite floats are written as the strings "nan",
"inf" and "-inf" (strict JSON has no NaN; `float()` reads the strings back).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from kan_engine import atomic, presets_io
from kan_engine.config import RunConfig
from kan_engine.errors import ConfigError, KanError, RunDirError
from kan_engine.untrusted import printable

CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
INIT = f"{CHECKPOINTS}/init.pt"  # `model.init_from` of a run that brings its own start weights
STATUSES = ("running", "finished", "early_stopped", "stopped", "diverged", "failed")


class RunWriteError(KanError):
    """A file of the run folder could not be written (full disk, permissions).

    What was written before is intact. Raised once a run exists, so it is a failed run (exit 1),
    not bad input (exit 2)."""


def write_error(path: Path, exc: OSError) -> RunWriteError:
    reason = exc.strerror or str(exc)
    return RunWriteError(f"{path}: cannot write: {reason}; what was written before is unchanged")


def write_file(path: Path, data: bytes | str) -> None:
    """Atomic write of a run's file (or an export) whose failure names the file: a full disk is a
    failed run (exit 1), not bad input."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        atomic.write_bytes(path, data)
    except OSError as exc:
        raise write_error(path, exc) from exc


def check_output_file(path: Path, option: str, suffixes: tuple[str, ...] = ()) -> None:
    """A file a command is about to write (`--out`), checked before any work: in a folder that
    exists (a typo is not silently made a new folder), not itself a folder, a device or a link,
    and with one of `suffixes` when the format follows the name. ConfigError naming `option`."""
    path = Path(path)
    shown = printable(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(option, "", f"{shown}: the name must end in {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ConfigError(option, "", f"{shown}: no folder {printable(path.parent)} to write into")
    try:
        atomic.check_replaceable(path)
    except atomic.NotRegularFileError as exc:
        raise ConfigError(option, "", f"{shown}: {exc.strerror}") from None


def create_run_dir(out_dir: Path, preset: str, now: float | None = None) -> Path:
    """Make `out_dir/<YYYYmmdd-HHMMSS>-<preset>` (with `-2`, `-3`... if taken) and return it.

    The folder is created with `exist_ok=False`, so two runs started in the same second by two
    processes still get different folders.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", preset).strip("-") or "custom"
    out_dir = Path(out_dir)
    base = f"{stamp}-{safe}"
    try:
        made = _missing_folders(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 10000):
            path = out_dir / (base if attempt == 1 else f"{base}-{attempt}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            (path / CHECKPOINTS).mkdir()
            _MADE_FOR[path] = made
            return path
    except OSError as exc:  # under a file, read-only, no permission, no space
        reason = exc.strerror or str(exc)
        where = exc.filename or out_dir
        raise RunDirError(f"{where}: cannot create a run folder there: {reason}") from None
    raise RunDirError(f"{out_dir}: cannot find a free run folder name for {base!r}")


# the folders above a run folder that `create_run_dir` made for it (innermost first)
_MADE_FOR: dict[Path, list[Path]] = {}


def _missing_folders(out_dir: Path) -> list[Path]:
    """The folders of `out_dir` that do not exist yet, innermost first: what mkdir -p makes."""
    missing = []
    for folder in (out_dir, *out_dir.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def remove_new_run_dir(path: Path) -> None:
    """Delete a run folder that trained nothing, and the folders `create_run_dir` made above
    it where they are empty now: a refused run (missing data, Ctrl-C while loading) leaves no
    `--out` folder behind that was not there before. Folders that were there are kept."""
    shutil.rmtree(path, ignore_errors=True)
    for folder in _MADE_FOR.pop(Path(path), []):
        try:
            folder.rmdir()  # only if empty: another run may have started in it meanwhile
        except OSError:
            return


def preset_of(run_dir: Path) -> str:
    """The preset part of a run folder's name (`create_run_dir`'s `<stamp>-<preset>[-N]`)."""
    match = re.fullmatch(r"\d{8}-\d{6}-(.+?)(?:-\d+)?", Path(run_dir).name)
    return match.group(1) if match else "custom"


def remove_leftovers(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a kill cut short (they are never read)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        atomic.remove_leftovers(folder)


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """`which` is "last" or "best"."""
    if which not in ("last", "best"):
        raise ValueError(f"checkpoint must be 'last' or 'best' (got {which!r})")
    return Path(run_dir) / CHECKPOINTS / (LAST if which == "last" else BEST)


def pick_checkpoint(run_dir: Path, which: str | None) -> tuple[str, str | None]:
    """(which, note) for a command given `--checkpoint` or not: not given means best.pt, or
    last.pt when the run has that only (stopped before its first epoch ended), said in the note."""
    if which is not None:
        return which, None
    # lexists: a best.pt that is there but unreadable (a broken link) is named, not passed over
    best, last = checkpoint_path(run_dir, "best"), checkpoint_path(run_dir, "last")
    if not os.path.lexists(best) and last.exists():
        return "last", "no best.pt yet (no epoch has finished): using last.pt"
    return "best", None


def write_config(run_dir: Path, config: RunConfig) -> None:
    write_file(Path(run_dir) / CONFIG, presets_io.render(config))


def check_run_folder(run_dir: Path) -> None:
    """RunDirError unless `run_dir` is a folder: a typo or a file given as RUN_DIR is named as
    such, not as a folder whose files are missing."""
    if not Path(run_dir).is_dir():
        if not os.path.lexists(run_dir):
            what = "no such folder"
        elif not os.path.exists(run_dir):
            what = "a broken symbolic link"
        else:
            what = "it is a file"
        raise RunDirError(f"{run_dir}: not a run folder ({what})")


def check_replaceable_files(run_dir: Path) -> None:
    """RunDirError unless a resumed run can write what it replaces: checkpoints/ a folder (or
    absent), summary.json, last.pt and best.pt regular files (or absent). Checked before the
    resume trains, so a folder or link in one's place is refused at once (exit 2) instead of
    failing the run at its first checkpoint, an epoch later (exit 1)."""
    folder = Path(run_dir) / CHECKPOINTS
    if os.path.lexists(folder) and not folder.is_dir():
        raise RunDirError(f"{folder}: is not a folder; the run writes its checkpoints there")
    for path in (Path(run_dir) / SUMMARY, folder / LAST, folder / BEST):
        try:
            atomic.check_replaceable(path)
        except atomic.NotRegularFileError as exc:
            raise RunDirError(f"{path}: {exc.strerror}; move it aside to resume") from None


def read_config(run_dir: Path) -> RunConfig:
    """The run's config.toml; a config.toml that is not a regular file is named by its kind."""
    check_run_folder(run_dir)
    path = Path(run_dir) / CONFIG
    if not os.path.lexists(path):
        raise RunDirError(f"{run_dir}: not a run folder ({CONFIG} missing)")
    return presets_io.read_file(path)


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings, tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(_plain(record), allow_nan=False)


class MetricsLog:
    """Append-only JSON-lines writer; `offset` is the byte position a checkpoint records.

    Each line is one `os.write` on an O_APPEND descriptor: no user-space buffer that a kill would
    lose or that a later flush would replay after a failure. A failed write is cut back to the
    last whole line and raises RunWriteError naming the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, record: dict[str, Any]) -> None:
        data = (dumps(record) + "\n").encode("utf-8")
        view = memoryview(data)
        try:
            while view:  # a full disk may take part of the line before it fails
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):  # shrinking a file needs no space
                os.ftruncate(self._fd, self._size)
            raise write_error(self.path, exc) from exc
        self._size += len(data)

    @property
    def offset(self) -> int:
        return self._size

    def close(self) -> None:
        os.close(self._fd)


def truncate_metrics(run_dir: Path, offset: int) -> None:
    """Cut `metrics.jsonl` back to `offset` bytes (rewritten atomically).

    Lines after the offset belong to steps the resumed run is about to replay; dropping them keeps
    every epoch row exactly once. A file shorter than the offset (lost at power failure) is kept,
    with a partial last line removed.
    """
    path = Path(run_dir) / METRICS
    data = path.read_bytes() if path.exists() else b""
    kept = data[:offset]
    if not kept.endswith(b"\n"):
        kept = kept[: kept.rfind(b"\n") + 1]
    if kept != data:
        write_file(path, kept)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records; an unterminated last line (a run killed mid-write) is ignored.

    Any other line that is not UTF-8 text holding a JSON object (a damaged or foreign file) is a
    RunDirError naming the file and the line: callers print one line instead of a traceback.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    if not path.is_file():  # a FIFO would block the read forever, a device never end it
        raise RunDirError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror or exc}") from None
    # the last part is b"" after a final newline, else the line a kill cut short: left out
    lines = data.split(b"\n")[:-1]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise RunDirError(f"{path}:{number}: not UTF-8 text (a damaged log)") from None
        except json.JSONDecodeError:
            raise RunDirError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    text = json.dumps(_plain(summary), indent=2) + "\n"
    write_file(Path(run_dir) / SUMMARY, text)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json as a dict; RunDirError names the file when it is missing or unreadable."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise RunDirError(f"{run_dir}: {SUMMARY} missing")
    try:
        summary = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: not readable JSON ({exc})") from None
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(summary, dict):
        raise RunDirError(f"{path}: not a JSON object")
    return summary

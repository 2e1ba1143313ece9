"""What users hand us: their files, read without hanging, and their text, shown harmlessly.

A preset, a run's config.toml or a `--set` value is input from someone else as often as not (a
shared preset, a run folder copied from a cluster). Reading must neither block nor run away:
only regular files of bounded size are read, and a path that names a FIFO, a device, a socket or
a folder (directly or through a symlink) is refused at once, before it is opened, by its kind.
The open itself is non-blocking and the opened descriptor is checked again (`fstat`), so a file
swapped for a FIFO between the check and the open is refused too instead of hanging. Parsed
data is checked for absurd nesting before anything recurses into it.

Text from users (descriptions, names, paths, CSV headers, class folders, the values echoed by
errors) is shown through `printable`, which makes every character that a terminal would act on
or that would forge a line (C0 and C1 controls, DEL, ESC, CR, LF, tabs, line separators, bidi
overrides) visible as an escape. No rich or textual here: the engine's own messages use it too.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path
from typing import Any

from kan_engine.errors import ConfigError

PRESET_LIMIT = 1 << 20  # bytes: a full preset is ~3 KB; 1 MiB leaves room for any comments
MAX_DEPTH = 8  # nesting of tables and arrays: the schema needs 3 (optim.lr_mult.cnn)
READ_CHUNK = 1 << 24  # bytes asked of one read: os.read allocates what it is asked for

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _refusal(path: Path, mode: int) -> str:
    link = " (through a symbolic link)" if path.is_symlink() else ""
    return f"is {_kind(mode)}{link}, not a regular file: only regular files are read"


def not_regular(path: Path, *, missing: str = "file not found") -> str | None:
    """Why `path` is no regular file to read (`missing`, a broken link, a folder, a FIFO, a
    device...), or None when it is one. Only `stat`, so nothing is opened: every reader of a
    user's file (presets, config.toml, checkpoints) names what is there instead of calling it
    missing or hanging on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else missing
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return None if stat.S_ISREG(mode) else _refusal(path, mode)


def read_bytes(path: Path, *, limit: int = PRESET_LIMIT) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; ConfigError(path, "", reason) else.

    Never blocks: the kind is checked with `stat` before opening (opening some devices has side
    effects), the open is O_NONBLOCK, and the descriptor is checked again with `fstat`.
    """
    source = str(path)
    reason = not_regular(Path(path))
    if reason is not None:
        raise ConfigError(source, "", reason)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return _read_regular(fd, source, Path(path), limit)
    finally:
        os.close(fd)


def _read_regular(fd: int, source: str, path: Path, limit: int) -> bytes:
    """Read an open descriptor that must still be a regular file, at most `limit` bytes."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped after the stat above
        raise ConfigError(source, "", _refusal(path, info.st_mode))
    too_large = f"is too large ({{}} bytes; at most {limit} are read)"
    if info.st_size > limit:
        raise ConfigError(source, "", too_large.format(info.st_size))
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:  # the file may grow while it is read
            chunk = os.read(fd, min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    if size > limit:
        raise ConfigError(source, "", too_large.format(f"more than {limit}"))
    return b"".join(chunks)


def read_text(path: Path, *, limit: int = PRESET_LIMIT) -> str:
    """`read_bytes` decoded as UTF-8; a binary file is refused by name, not decoded with errors."""
    try:
        return read_bytes(path, limit=limit).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not a text file (invalid UTF-8)") from None


def check_depth(data: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """ConfigError naming the first path nested deeper than `limit` tables / arrays.

    Iterative, so that it cannot itself hit the recursion limit that it protects the validator
    (and every repr of the data) from.
    """
    stack: list[tuple[Any, list[str]]] = [(data, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            children = [(value, [*path, str(key)]) for key, value in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(value, [*path, str(index)]) for index, value in enumerate(node)]
        else:
            continue
        if len(path) >= limit and children:
            key = ".".join(short(part, 20) for part in path)
            raise ConfigError(source, key, f"nested more than {limit} tables or arrays deep")
        stack.extend(children)


# --- showing user text ----------------------------------------------------------------------

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# bidi embeddings, overrides and isolates ("Trojan source"), LRM/RLM/ALM; line/paragraph separators
INVISIBLE = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)


def _escape(code: int) -> str:
    if chr(code) in _NAMED:
        return _NAMED[chr(code)]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by os.fsdecode
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_CONTROLS = (*range(0x20), *range(0x7F, 0xA0))  # C0, DEL, C1
_SURROGATES = range(0xD800, 0xE000)  # lone surrogates cannot even be encoded for the terminal
_TABLE = {code: _escape(code) for code in (*_CONTROLS, *INVISIBLE, *_SURROGATES)}
_MULTILINE_TABLE = {code: text for code, text in _TABLE.items() if code != ord("\n")}


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with every control, bidi and separator character written as a visible escape
    (`\\x1b`, `\\n`, `\\u202e`): safe to print on a terminal and always one line (unless
    `keep_newlines`). Other characters, backslashes included, are left alone: the aim is that
    nothing is hidden or acted on, not a reversible encoding."""
    text = str(text)
    if text.isprintable():  # the common case; isprintable is False for every escaped character
        return text
    return text.translate(_MULTILINE_TABLE if keep_newlines else _TABLE)


def has_unprintable(text: str) -> str | None:
    """The first character `printable` would escape, as its escape; None if there is none."""
    for char in text:
        if ord(char) in _TABLE:
            return _TABLE[ord(char)]
    return None


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 4, 6, 6


def short_repr(value: Any) -> str:
    """repr for error messages: control characters escaped (repr does it), long values and deep
    structures cut (a 1 MB string or a 1000-level table must not become the error line)."""
    try:
        return printable(_SHORT.repr(value))
    except (ValueError, RecursionError):  # an int past Python's digit limit, a cycle
        return f"<{type(value).__name__}>"


def short(text: str, limit: int = 60) -> str:
    """`printable(text)`, cut to about `limit` characters with an ellipsis in the middle."""
    text = printable(text)
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[-half:]}"

"""Errors the user can act on.

Every error raised towards the user carries where the bad value came from (a file or a CLI option),
which key, and why, so that the CLI can print one line and the TUI can show it inline.
"""

from __future__ import annotations


class KanError(Exception):
    """Base of all errors the engine raises on purpose (anything else is a bug)."""


def interrupted(exc: BaseException) -> bool:
    """Whether a Ctrl-C is behind `exc`, as its cause or context (the chain a traceback shows):
    libraries turn a KeyboardInterrupt raised inside their own code into errors of their own.
    torch's zip writer reported a Ctrl-C during `torch.save` as a failed write ("unexpected
    pos"), which ended a stopping run as failed; its ONNX exporter caught one ~6 s into `export
    --format onnx` in a lazy import and raised a TorchExportError (exit 1, a page of traceback)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        suppressed = current.__suppress_context__ and current.__cause__ is None
        current = current.__cause__ or (None if suppressed else current.__context__)
    return False


KEY_SHOWN = 80  # characters of a key the message shows


def shown_key(key: str) -> str:
    """A key as an error line shows it: an unknown key is user text (`--set`, `--layer`), and a
    5000-character one must not become the line."""
    return key if len(key) <= KEY_SHOWN else f"{key[:KEY_SHOWN]}... ({len(key):,} characters)"


class ConfigError(KanError):
    """A config value (from a preset file, `--set`, an option or the TUI form) is invalid."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{shown_key(key)}: {reason}" if key else f"{where}{reason}")


class PresetError(KanError):
    """A preset cannot be found, named, saved or deleted."""


class DataNotFoundError(KanError):
    """A data set is not on disk and cannot be fetched; the message lists where we looked."""


class RunDirError(KanError):
    """A run folder is missing files needed to resume or evaluate it."""


class DataError(KanError):
    """The user's data is there but cannot be trained on (a corrupt file, a CSV with one class...).

    Raised while the data is read and checked, before a run folder exists, so bad data is exit 2
    and not a failed run. One line: the file, where in it (line, column, image), what is wrong,
    and how to fix it; `where` and `fix` may be empty.
    """

    def __init__(self, source: str, reason: str, *, where: str = "", fix: str = "") -> None:
        self.source = source
        self.where = where
        self.reason = reason
        self.fix = fix
        message = ": ".join(part for part in (source, where, reason) if part)
        if fix:
            message = f"{message}; {fix}"
        super().__init__(" ".join(message.splitlines()))


class SymbolicError(KanError):
    """A symbolic formula cannot be made or evaluated (sympy missing, too many edges, a formula
    with a node the evaluator does not know)."""

"""Presets: the built-in TOML files shipped with the package, and the user's own.

Built-ins are read-only; user presets live in the user config folder (platformdirs) or wherever
`$KAN_TUI_CONFIG` points. A preset is named `^[a-z0-9][a-z0-9_-]{0,63}$`, so a name can never leave
its folder; anything with a path separator or ending in `.toml` is read as a file path instead.
Files are rendered with every field written out and commented from the schema's descriptions, so
that a user can read and edit them, and saved atomically.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from kan_engine import atomic, untrusted
from kan_engine.config import DESCRIPTION_MAX, RunConfig, to_data, validate_config
from kan_engine.errors import ConfigError, PresetError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BUILTIN_NAMES = ("lite", "standard", "power", "sprint", "cpu")
AUTO = "auto"  # not a file: `sprint` where a CUDA GPU is found, `cpu` elsewhere (`auto_preset`)
DESCRIPTION_SHOWN = DESCRIPTION_MAX  # a listing shows as much as a valid description holds


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    builtin: bool
    description: str


def user_dir() -> Path:
    override = os.environ.get("KAN_TUI_CONFIG")
    if override:
        return Path(override) / "presets"
    import platformdirs

    return Path(platformdirs.user_config_dir("kan-tui")) / "presets"


def builtin_dir() -> Path:
    """Installed, the presets are the package `kan_engine.presets`; in a plain source checkout
    (PYTHONPATH=., torchrun on a GPU box) they are the repository's `presets/` folder."""
    try:
        return Path(str(resources.files("kan_engine.presets")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "presets"


def is_path_like(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or os.sep in ref or ref.startswith(".")


NAME_SHOWN = 200  # characters of a refused name echoed whole: a path given as a name fits


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        shown = repr(name) if len(name) <= NAME_SHOWN else untrusted.short_repr(name)
        raise PresetError(
            f"preset name {shown} is invalid: use 1-64 characters a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def read_file(path: Path) -> RunConfig:
    """Parse and validate one preset file (or a run's config.toml); every failure names the file.

    Only a regular file of at most `untrusted.PRESET_LIMIT` bytes is read, so a FIFO, a device or
    a symlink to /dev/zero is refused at once instead of hanging or filling memory."""
    source = str(path)
    text = untrusted.read_text(path)
    if not text.strip():
        raise ConfigError(source, "", "file is empty")
    return validate_config(parse_toml(text, source), source)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """tomllib.loads whose every failure is one ConfigError line: bad syntax, and also what is
    legal but absurd, which tomllib answers with RecursionError (arrays or inline tables a few
    hundred deep) or ValueError (an integer past Python's 4300-digit limit)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"TOML syntax error: {exc}") from None
    except RecursionError:
        reason = f"nested more than {untrusted.MAX_DEPTH} tables or arrays deep"
        raise ConfigError(source, "", reason) from None
    except ValueError:
        reason = "holds an integer too long to read (at most 4300 digits)"
        raise ConfigError(source, "", reason) from None


def auto_preset() -> str:
    """The built-in that `auto` stands for on this machine: a first run that finishes in minutes
    wherever it runs. Only `auto` pays for importing torch to look for a GPU."""
    import torch

    return "sprint" if torch.cuda.is_available() else "cpu"


def resolve(ref: str) -> tuple[RunConfig, str]:
    """A preset name (user presets shadow nothing: built-ins win), `auto`, or a path to a .toml
    file; the name returned is the preset's own (for `auto`, the one picked)."""
    if is_path_like(ref):
        path = Path(ref).expanduser()
        return read_file(path), path.stem
    check_name(ref)
    if ref == AUTO:
        return resolve(auto_preset())
    for folder in (builtin_dir(), user_dir()):
        path = folder / f"{ref}.toml"
        if os.path.lexists(path):  # not is_file(): a FIFO there is refused by name, not unknown
            return read_file(path), ref
    known = ", ".join(p.name for p in list_presets())
    raise PresetError(f"unknown preset {ref!r} (known: {known}); or give a path to a .toml file")


def list_presets() -> list[PresetInfo]:
    found: list[PresetInfo] = []
    for folder, builtin in ((builtin_dir(), True), (user_dir(), False)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            if not NAME_RE.fullmatch(path.stem) or (not builtin and path.stem in BUILTIN_NAMES):
                continue
            found.append(PresetInfo(path.stem, path, builtin, _description(path)))
    return found


def _description(path: Path) -> str:
    """The file's description as it is (not validated: a listing shows broken presets too);
    callers escape it for display. A file that cannot be read safely says so instead."""
    try:
        data = parse_toml(untrusted.read_text(path), str(path))
    except ConfigError:
        return "(unreadable)"
    return str(data.get("description", ""))[:DESCRIPTION_SHOWN]


def render(config: RunConfig) -> str:
    """TOML with every field written out and a comment from the schema on each line."""
    data = to_data(config)
    lines: list[str] = []
    _render_table(RunConfig, data, [], lines)
    return _escape_invisible("\n".join(lines).rstrip() + "\n")


def _escape_invisible(text: str) -> str:
    """tomli_w escapes C0 controls but writes C1 controls, bidi overrides and line separators as
    they are; as `\\uXXXX` (valid TOML: user text only ever sits in basic strings here) the file
    shows the same on any terminal, `cat` or `presets show`."""
    return text.translate(_TOML_ESCAPES)


_TOML_ESCAPES = {code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), *untrusted.INVISIBLE)}


def _render_table(
    schema: type[BaseModel], data: dict[str, Any], path: list[str], lines: list[str]
) -> None:
    tables: list[tuple[str, type[BaseModel]]] = []
    for key, field in schema.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            tables.append((key, annotation))
            continue
        if key not in data:
            lines.append(f"# {key} = (not set)  # {field.description}")
            continue
        value = _inline(key, data[key])
        lines.append(f"{value}  # {field.description}" if field.description else value)
    for key, sub in tables:
        lines.append("")
        lines.append(f"[{'.'.join([*path, key])}]")
        _render_table(sub, data[key], [*path, key], lines)


def _inline(key: str, value: Any) -> str:
    if isinstance(value, list):
        items = ", ".join(tomli_w.dumps({"v": item}).strip()[len("v = ") :] for item in value)
        return f"{key} = [{items}]"
    return tomli_w.dumps({key: value}).strip()


def save(name: str, config: RunConfig, *, force: bool = False) -> Path:
    check_name(name)
    if name in (*BUILTIN_NAMES, AUTO):
        raise PresetError(
            f"{name!r} is a built-in preset and cannot be overwritten; choose another name"
        )
    path = user_dir() / f"{name}.toml"
    if path.exists() and not force:
        raise PresetError(f"user preset {name!r} exists ({path}); use --force to overwrite")
    try:
        atomic.write_text(path, render(config))
    except OSError as exc:
        reason = exc.strerror or exc
        raise PresetError(f"{path}: cannot write: {reason}; nothing was changed") from None
    return path


def delete(name: str) -> Path:
    check_name(name)
    if name in (*BUILTIN_NAMES, AUTO):
        raise PresetError(f"{name!r} is a built-in preset and cannot be deleted")
    path = user_dir() / f"{name}.toml"
    # a FIFO or a symlink that `list` shows as unreadable can be deleted too; a folder cannot
    if not os.path.lexists(path) or (path.is_dir() and not path.is_symlink()):
        raise PresetError(f"no user preset {name!r} in {user_dir()}")
    try:
        path.unlink()
    except OSError as exc:  # a read-only folder, no permission
        reason = exc.strerror or str(exc)
        raise PresetError(f"{path}: cannot delete: {reason}; nothing was changed") from None
    return path

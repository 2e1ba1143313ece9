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

from kan_engine import atomic
from kan_engine.config import RunConfig, to_data, validate_config
from kan_engine.errors import ConfigError, PresetError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
BUILTIN_NAMES = ("lite", "standard", "power", "sprint")


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


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise PresetError(
            f"preset name {name!r} is invalid: use 1-64 characters a-z, 0-9, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def read_file(path: Path) -> RunConfig:
    """Parse and validate one preset file; every failure names the file."""
    source = str(path)
    if not path.exists():
        raise ConfigError(source, "", "file not found")
    if path.is_dir():
        raise ConfigError(source, "", "is a folder, not a preset file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not a text file (invalid UTF-8)") from None
    if not text.strip():
        raise ConfigError(source, "", "file is empty")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"TOML syntax error: {exc}") from None
    return validate_config(data, source)


def resolve(ref: str) -> tuple[RunConfig, str]:
    """A preset name (user presets shadow nothing: built-ins win) or a path to a .toml file."""
    if is_path_like(ref):
        path = Path(ref).expanduser()
        return read_file(path), path.stem
    check_name(ref)
    for folder in (builtin_dir(), user_dir()):
        path = folder / f"{ref}.toml"
        if path.is_file():
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
    try:
        return str(tomllib.loads(path.read_text("utf-8")).get("description", ""))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "(unreadable)"


def render(config: RunConfig) -> str:
    """TOML with every field written out and a comment from the schema on each line."""
    data = to_data(config)
    lines: list[str] = []
    _render_table(RunConfig, data, [], lines)
    return "\n".join(lines).rstrip() + "\n"


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
    if name in BUILTIN_NAMES:
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
    if name in BUILTIN_NAMES:
        raise PresetError(f"{name!r} is a built-in preset and cannot be deleted")
    path = user_dir() / f"{name}.toml"
    if not path.is_file():
        raise PresetError(f"no user preset {name!r} in {user_dir()}")
    path.unlink()
    return path

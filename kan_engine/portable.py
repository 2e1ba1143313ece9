"""A model as two files that load without pickle: safetensors weights, and a JSON beside them
(`<name>.json`) saying how to build the module they fit.

Why not a checkpoint: a checkpoint is a training position (optimizer, generators, counters) read
with `torch.load`; an export is the evaluated weights alone, in a format made to be read from
strangers (safetensors holds tensors and nothing that runs), plus the build arguments
(`run_setup.model_args`) and the inference data (`inference_meta`), so `models.load` rebuilds the
module from the registry. The JSON records the weights' SHA-256: a JSON beside another export's
weights is refused, not loaded with the wrong numbers. Both files are written atomically, the
weights first, so a JSON never names weights that are not complete.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kan_engine import runs, untrusted
from kan_engine.config import KanSection, ModelSection, TrainSection
from kan_engine.errors import ConfigError

FORMAT = "kan-tui-safetensors"
VERSION = 1
SUFFIX = ".safetensors"
JSON_LIMIT = 64 << 20  # bytes: the build arguments are ~1 KB; a wide table's names fit easily
WEIGHTS_LIMIT = 1 << 36  # bytes (64 GiB): the largest model is ~0.25 GB; a bound, not a target
MAX_INPUTS = 1 << 22  # values per input (or outputs): 4 M, a 2048 x 2048 RGB image


def sidecar(path: Path) -> Path:
    """The JSON beside the weights `path` (`model.safetensors` -> `model.json`)."""
    return Path(path).with_suffix(".json")


def write(path: Path, model: nn.Module, args: dict[str, Any], about: dict[str, Any]) -> Path:
    """Write `model`'s state dict to `path` and the JSON of `args` and `about` (the inference
    data, where it came from) beside it; returns the JSON's path."""
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    blob = save(tensors, metadata={"format": FORMAT})
    info = {
        "format": FORMAT,
        "version": VERSION,
        "weights": Path(path).name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "model": args,
        **about,
    }
    runs.write_file(path, blob)
    runs.write_file(sidecar(path), json.dumps(info, indent=2) + "\n")
    return sidecar(path)


def read(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(build arguments, state dict) of the export at `path` (its weights or its JSON);
    ConfigError naming the file and the field for anything missing, damaged or foreign."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    weights = path.with_suffix(SUFFIX) if path.suffix == ".json" else path
    info_path = sidecar(weights)
    source = str(info_path)
    try:
        info = json.loads(untrusted.read_text(info_path, limit=JSON_LIMIT))
    except json.JSONDecodeError as exc:
        raise ConfigError(source, "", f"not JSON ({exc.msg}, line {exc.lineno})") from None
    untrusted.check_depth(info, source)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ConfigError(source, "format", f"not a kan-tui export (expected {FORMAT!r})")
    if info.get("version") != VERSION:
        version = untrusted.short_repr(info.get("version"))
        raise ConfigError(source, "version", f"{version}: this kan-tui reads version {VERSION}")
    blob = untrusted.read_bytes(weights, limit=WEIGHTS_LIMIT)
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        reason = (
            f"its SHA-256 is not the one {info_path.name} records (the weights of another export?)"
        )
        raise ConfigError(str(weights), "", reason)
    try:
        state = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise ConfigError(str(weights), "", f"not safetensors weights ({exc})") from None
    return _build_args(info.get("model"), source), state


def _build_args(args: Any, source: str) -> dict[str, Any]:
    """The `model` table checked: its shape here, every value by the config schema that
    training's own values passed (a huge grid or width in a hostile file would otherwise be
    built before anything could refuse it)."""
    if not isinstance(args, dict):
        raise ConfigError(source, "model", "missing, or not a table")
    shape, outputs, options = (args.get(key) for key in ("input_shape", "num_classes", "options"))
    if not (
        isinstance(shape, list)
        and len(shape) in (1, 3)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
        and math.prod(shape) <= MAX_INPUTS
    ):
        reason = f"not (C, H, W) or (F,) sizes of at most {MAX_INPUTS} in all"
        raise ConfigError(source, "model.input_shape", f"{reason} ({untrusted.short_repr(shape)})")
    if not isinstance(outputs, int) or isinstance(outputs, bool) or not 1 <= outputs <= MAX_INPUTS:
        reason = f"not a count ({untrusted.short_repr(outputs)})"
        raise ConfigError(source, "model.num_classes", reason)
    if not isinstance(options, dict):
        raise ConfigError(source, "model.options", "missing, or not a table")
    kan = {key: value for key, value in options.items() if key != "width"}
    sections = {
        "model": (ModelSection, {"name": args.get("name"), "width": options.get("width", [])}),
        "model.options": (KanSection, kan),
        "model.dtype": (TrainSection, {"dtype": args.get("dtype")}),
    }
    checked = {}
    for key, (section, values) in sections.items():
        try:
            checked[key] = section.model_validate(values)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ConfigError(source, key, " ".join(str(exc).splitlines()[1:3])) from None
    model = checked["model"]
    built = {key: getattr(checked["model.options"], key) for key in kan}
    if model.width:
        built["width"] = model.width
    return {
        "name": model.name,
        "input_shape": shape,
        "num_classes": outputs,
        "options": built,
        "dtype": checked["model.dtype"].dtype,
    }

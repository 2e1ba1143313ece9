"""Checkpoints that survive kill -9 and full disks, and load with `weights_only=True`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts only (no pickled
objects), so `torch.load(..., weights_only=True)` reads it and nothing in a run folder is ever
executed. The trainer puts in it: `model`, `optimizer`, `schedule`, `scaler` state dicts, `rng`
(`rng_state()`), the position (`epoch`, `step_in_epoch`), the trainer `counters` (the global step
among them), the resolved `config` as plain data, `metrics_offset`, and `data`: what using the
model on new inputs needs (`inference_meta`: normalisation, classes, input shape). The KAN grids
are buffers, so they are in `model`. With a weight average (`train.ema_decay`), `ema` holds it
(`model`: a whole state dict, `updates`): the weights that were validated, and so the ones to
evaluate (`evaluated_weights`); `model` stays the raw weights that training resumes from.

Writes go through `atomic.write_with`: the previous file stays whole until the new one is
complete and fsynced. A failing write (disk full) raises `CheckpointWriteError` naming the file and
the reason; the previous checkpoint is untouched.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kan_engine import atomic, untrusted
from kan_engine.errors import RunDirError, interrupted
from kan_engine.runs import RunWriteError

FORMAT = 1
LOW_SPACE = 64 * 2**20  # free bytes below which a failed write is put down to a full disk


class CheckpointWriteError(RunWriteError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


def save(path: Path, state: dict[str, Any]) -> None:
    path = Path(path)
    try:
        atomic.write_with(path, lambda handle: torch.save({"format": FORMAT, **state}, handle))
    except (OSError, RuntimeError) as exc:
        if interrupted(exc):  # a Ctrl-C during the write, which torch reports as a failed one
            raise KeyboardInterrupt from None  # the previous checkpoint is unchanged
        # torch's zip writer reports a failed write (a full disk) as a RuntimeError from C++
        # ("[enforce fail at inline_container.cc ...] file write failed"), not as an OSError
        raise CheckpointWriteError(
            f"{path}: cannot write checkpoint: {_write_reason(exc, path.parent)}; "
            "the previous checkpoint is unchanged"
        ) from exc


def _write_reason(exc: BaseException, folder: Path) -> str:
    """An OSError's own reason; for torch's RuntimeError, what the folder's free space says."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    with contextlib.suppress(OSError):
        stats = os.statvfs(folder)
        if stats.f_bavail * stats.f_frsize < LOW_SPACE:
            return "No space left on device"
    return f"write failed ({_one_line(exc)})"


def load(
    path: Path, device: torch.device | str = "cpu", *, keys: Collection[str] = ("model",)
) -> dict[str, Any]:
    """Read a checkpoint safely; a missing, unreadable or foreign file, or one without `keys`,
    is a one-line RunDirError naming it.

    Only `weights_only=True`: a file holding any other pickled object (which could run code when
    unpickled) is refused, and the message says so instead of torch's advice to load it unsafely.
    """
    path = Path(path)
    reason = untrusted.not_regular(path, missing="checkpoint missing")
    if reason is not None:
        raise RunDirError(f"{path}: {reason}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(exc)
        if "global" not in detail.lower() and not _starts_as_pickle(path):  # garbage, not code
            reason = f"damaged (truncated or not a checkpoint: {detail})"
            raise RunDirError(f"{path}: {reason}") from None
        raise RunDirError(
            f"{path}: refused: not plain tensors and data ({detail}); "
            "checkpoints are only loaded with weights_only=True, nothing in it was run"
        ) from None
    except Exception as exc:  # a foreign file breaks the unpickler in many different ways
        reason = _one_line(exc) or "empty file"
        raise RunDirError(f"{path}: damaged (truncated or not a checkpoint: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path}: unknown checkpoint format")
    missing = [key for key in keys if key not in state]
    if missing:
        raise RunDirError(f"{path}: not a kan-tui checkpoint (missing {', '.join(missing)})")
    return state


@contextlib.contextmanager
def fitting(path: Path, against: str) -> Iterator[None]:
    """Loading a checkpoint's states into the model and optimizer built from `against` (a
    config.toml): a mismatch (an edited config, a foreign file) becomes one RunDirError line."""
    try:
        yield
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise RunDirError(f"{path}: does not fit {against}: {_one_line(exc)}") from None


def evaluated_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model state dict that validation judged: the weight average where the run kept one."""
    ema = state.get("ema")
    return ema["model"] if isinstance(ema, dict) else state["model"]


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _starts_as_pickle(path: Path) -> bool:
    """Whether the file opens with a pickle's PROTO opcode (protocol 2-5): a refused pickle, as
    opposed to bytes that are no pickle at all (which the unpickler rejects the same way)."""
    try:
        with open(path, "rb") as file:
            head = file.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _unpickling_detail(exc: pickle.UnpicklingError) -> str:
    """The line of torch's long message that says what was refused (e.g. `GLOBAL posix.system`)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return next((line for line in lines if "nsupported" in line), "unsupported content")


def pack_random(state: tuple[Any, ...]) -> dict[str, Any]:
    """A `random.getstate()` tuple as plain data (lists, not nested tuples)."""
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def unpack_random(state: dict[str, Any]) -> tuple[Any, ...]:
    return (state["version"], tuple(state["internal"]), state["gauss"])


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": pack_random(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(unpack_random(state["python"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].cpu().numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

"""`kan-tui export`: a run's model as ONNX, TorchScript or safetensors, checked before it counts.

The fast KAN path (a custom autograd function, Triton kernels on a GPU) cannot be traced, so
ONNX and TorchScript trace the textbook reference path (`fast=False` on every KANLinear): the
same function, computed the plain way. Each export is checked against the PyTorch model on a
batch of `CHECK_BATCH` seeded random inputs, a batch size other than the traced one, so the
check also shows the batch axis is free: ONNX through onnxruntime, TorchScript by loading the
traced file back, safetensors through `models.load`. ONNX and TorchScript are checked before
they are written, and a failed check writes nothing.

The exported model takes inputs normalised as in training and returns logits (classification)
or standardised outputs (regression); the inference data (`inference_meta`: mean, std, class
names, target statistics) travels with it: ONNX metadata `kan_tui`, a `kan_tui.json` extra
file in TorchScript, the JSON beside safetensors. Everything is written atomically, on the CPU.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_engine import models, portable, runs
from kan_engine.errors import KanError
from kan_engine.trained import Trained

EXPORT_DIR = "export"  # inside the run folder: the default place
FILES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
NEEDS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "torchscript": (),
    "safetensors": ("safetensors",),
}
CHECK_BATCH = 64
TRACE_BATCH = 2
TOLERANCE = 1e-4  # max abs difference of outputs, relative to their size (at least 1)
META_KEY = "kan_tui"


class ExportError(KanError):
    """An export could not be made, or does not compute what the model computes."""


@dataclass
class Exported:
    """What an export wrote and how it compared with the PyTorch model."""

    paths: list[Path]
    max_diff: float  # max abs output difference on the check batch
    check: str  # how it was checked, for the report line


def default_path(run_dir: Path, fmt: str) -> Path:
    return Path(run_dir) / EXPORT_DIR / FILES[fmt]


def check_out(out: Path, fmt: str) -> None:
    """`--out` checked before any work (the safetensors JSON is named after the weights)."""
    suffixes = (portable.SUFFIX,) if fmt == "safetensors" else ()
    runs.check_output_file(out, "--out", suffixes)


def require(fmt: str) -> None:
    """The optional packages `fmt` needs, or one line saying how to get them."""
    missing = [name for name in NEEDS[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"--format {fmt} needs {', '.join(missing)}: pip install 'kan-tui[export]'"
        )


def export(trained: Trained, fmt: str, out: Path) -> Exported:
    """Write `trained`'s model as `fmt` to `out`, checked (see the module docstring)."""
    model, meta = trained.model, trained.meta
    shape = meta.input_shape
    dtype = models.DTYPES[trained.checkpoint.config.train.dtype]
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(TRACE_BATCH, *shape, generator=generator, dtype=dtype)
    sample = torch.randn(CHECK_BATCH, *shape, generator=generator, dtype=dtype)
    info = {"model": trained.args, "inference": meta.to_json(), "source": _source(trained)}
    if fmt == "safetensors":
        json_path = portable.write(
            out, model, trained.args, {k: info[k] for k in ("inference", "source")}
        )
        loaded = models.load(out)
        diff = _max_diff(_forward(model, sample), _forward(loaded, sample))
        return Exported([out, json_path], diff, "kan_engine.models.load")
    reference(model)
    expected = _forward(model, sample)
    if fmt == "onnx":
        blob, got, check = _onnx(model, example, sample, info, meta.task)
    else:
        blob, got, check = _torchscript(model, example, sample, info)
    diff = _max_diff(expected, got)
    if diff > TOLERANCE * max(1.0, float(expected.abs().max())):
        raise ExportError(
            f"{out}: not written: {check} differs from the PyTorch model by {diff:.3g}"
        )
    runs.write_file(out, blob)
    return Exported([out], diff, check)


def reference(model: nn.Module) -> None:
    """Every KAN layer on the textbook path, the one a tracer can follow."""
    for layer in models.kan_layers(model).values():
        layer.fast = False


def _onnx(
    model: nn.Module, example: torch.Tensor, sample: torch.Tensor, info: dict[str, Any], task: str
) -> tuple[bytes, torch.Tensor, str]:
    import onnx
    import onnxruntime

    output = "logits" if task == "classification" else "outputs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=["input"],
            output_names=[output],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(info)})
    blob = proto.SerializeToString()
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": sample.numpy()})
    return blob, torch.from_numpy(got).double(), "onnxruntime"


def _torchscript(
    model: nn.Module, example: torch.Tensor, sample: torch.Tensor, info: dict[str, Any]
) -> tuple[bytes, torch.Tensor, str]:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; it still is what was asked
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, (example,))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={f"{META_KEY}.json": json.dumps(info)})
        blob = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(blob))
    return blob, _forward(loaded, sample), "the saved TorchScript, loaded back"


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).double()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _source(trained: Trained) -> dict[str, Any]:
    opened = trained.checkpoint
    return {"run": str(opened.run_dir), "checkpoint": opened.which, "epoch": opened.epoch}

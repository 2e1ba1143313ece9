"""What a checkpoint keeps so that its model can be used on new inputs without the run's data.

Why: a prediction must preprocess new inputs exactly as training did, with the training split's
statistics, never with ones re-derived from the new inputs (three images have no meaningful
mean). The checkpoint's `data` entry holds them, with what else inference needs: the input
shape, the class names (a regression's target names), the task and, for regression, the target
statistics that turn the model's outputs back into values; for the user's tables, the feature
and label column names a new CSV is matched by. Checkpoints written before the entry existed
get the same from the run's training data, read again (`of_checkpoint` says so in its notice).

Plain data and tensors only, so `torch.load(weights_only=True)` reads it. A checkpoint is often
someone else's file, so what is read back is checked field by field (`parse`): a damaged entry
is one RunDirError line naming the file and the field, not a traceback later on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kan_engine import data as data_mod
from kan_engine.config import RunConfig
from kan_engine.datasets import Raw
from kan_engine.errors import RunDirError
from kan_engine.task import KINDS
from kan_engine.untrusted import short_repr

_MAX_SIDE = 1 << 16  # an input dimension beyond this is a damaged entry, not a real shape


@dataclass(frozen=True)
class InferenceMeta:
    """Everything between a raw input and the model, and between its outputs and an answer."""

    input_shape: tuple[int, ...]  # (C, H, W) or (F,)
    class_names: list[str]  # classification: the classes; regression: the target names
    mean: Tensor  # float64 (C,) or (F,): the training split's, per channel or feature
    std: Tensor
    task: str = "classification"
    target_mean: Tensor | None = None  # regression: float64 (outputs,), None for classification
    target_std: Tensor | None = None
    feature_names: list[str] | None = None  # the user's CSV: its feature columns, in order
    label_column: str | None = None

    @property
    def images(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def outputs(self) -> int:
        return len(self.class_names)

    def standardize(self, device: torch.device, dtype: torch.dtype) -> data_mod.Standardize:
        """The training batches' normalisation, from the stored statistics, in the model's dtype."""
        return data_mod.Standardize(
            self.mean, self.std, images=self.images, device=device, dtype=dtype
        )

    def values(self, outputs: Tensor) -> Tensor:
        """A regression's outputs (N, T) as values in the targets' own units."""
        if self.target_mean is None or self.target_std is None:
            return outputs.double()
        mean, std = (t.to(outputs.device) for t in (self.target_mean, self.target_std))
        return outputs.double() * std + mean

    def to_state(self) -> dict[str, Any]:
        """The checkpoint's `data` entry: plain values and CPU tensors."""
        return {
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "mean": self.mean,
            "std": self.std,
            "task": self.task,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "feature_names": self.feature_names,
            "label_column": self.label_column,
        }

    def to_json(self) -> dict[str, Any]:
        """The same as JSON-ready data (tensors as lists), for the files beside an export."""
        return {
            key: value.tolist() if isinstance(value, Tensor) else value
            for key, value in self.to_state().items()
        }


def from_bundle(bundle: data_mod.DataBundle) -> InferenceMeta:
    """The inference data of a run on `bundle`."""
    return InferenceMeta(
        input_shape=tuple(bundle.input_shape),
        class_names=list(bundle.class_names),
        mean=_vector(bundle.mean),
        std=_vector(bundle.std),
        task=bundle.task.kind,
        target_mean=_vector(bundle.target_mean),
        target_std=_vector(bundle.task.target_std),
        feature_names=bundle.feature_names,
        label_column=bundle.label_column,
    )


def of_bundle(bundle: data_mod.DataBundle) -> dict[str, Any]:
    """The `data` entry of a checkpoint of a run on `bundle`."""
    return from_bundle(bundle).to_state()


def of_checkpoint(
    state: dict[str, Any], path: Path, config: RunConfig, *, raw: Raw | None = None
) -> tuple[InferenceMeta, str | None]:
    """(the checkpoint's inference data, None), or for a checkpoint older than the entry, the
    same from the run's training data (`raw` when it is read already) and a notice saying so."""
    if "data" in state:
        return parse(state["data"], str(path)), None
    bundle = data_mod.load(config.data, device=torch.device("cpu"), seed=config.train.seed, raw=raw)
    notice = (
        f"{path} keeps no inference data (written before kan-tui stored it): the normalisation "
        f"is computed again from the run's training data ({bundle.source})"
    )
    return from_bundle(bundle), notice


def parse(entry: Any, source: str) -> InferenceMeta:
    """A stored entry (a checkpoint's tensors or an export's JSON lists) checked field by field;
    RunDirError naming `source` and the field otherwise."""
    if not isinstance(entry, dict):
        raise _bad(source, "", f"not a table ({short_repr(entry)})")
    shape = entry.get("input_shape")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) not in (1, 3)
        or not all(_whole(d) and 1 <= d <= _MAX_SIDE for d in shape)
    ):
        raise _bad(source, "input_shape", f"not (C, H, W) or (F,) sizes ({short_repr(shape)})")
    width = shape[0]  # channels or features: what the statistics are per
    task = entry.get("task", "classification")
    if task not in KINDS:
        raise _bad(source, "task", f"{short_repr(task)} is not one of {', '.join(KINDS)}")
    names = _names(entry.get("class_names"), source, "class_names")
    if not names or (task == "classification" and len(names) < 2):
        raise _bad(source, "class_names", f"{len(names)} names for a {task}")
    features = entry.get("feature_names")
    if features is not None:
        features = _names(features, source, "feature_names")
        if len(shape) != 1 or len(features) != width:
            raise _bad(source, "feature_names", f"{len(features)} names for inputs of {shape}")
    label = entry.get("label_column")
    if label is not None and not isinstance(label, str):
        raise _bad(source, "label_column", f"not a name ({short_repr(label)})")
    stats = {
        key: _stored_vector(entry.get(key), width, source, key, positive=key == "std")
        for key in ("mean", "std")
    }
    targets = {key: entry.get(key) for key in ("target_mean", "target_std")}
    if task == "classification" and any(v is not None for v in targets.values()):
        raise _bad(source, "target_mean", "target statistics for a classification")
    if (targets["target_mean"] is None) != (targets["target_std"] is None):
        raise _bad(source, "target_std", "one of target_mean / target_std without the other")
    if targets["target_mean"] is not None:
        targets = {
            key: _stored_vector(value, len(names), source, key, positive=key == "target_std")
            for key, value in targets.items()
        }
    return InferenceMeta(
        input_shape=tuple(int(d) for d in shape),
        class_names=names,
        mean=stats["mean"],
        std=stats["std"],
        task=task,
        target_mean=targets["target_mean"],
        target_std=targets["target_std"],
        feature_names=features,
        label_column=label,
    )


def _vector(value: Any) -> Tensor | None:
    """A statistic as a float64 CPU vector (one number per channel, feature or target)."""
    if value is None:
        return None
    return torch.as_tensor(value, dtype=torch.float64).detach().cpu().reshape(-1)


def _stored_vector(value: Any, size: int, source: str, key: str, *, positive: bool) -> Tensor:
    try:
        vector = torch.as_tensor(value, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise _bad(source, key, f"not a list of numbers ({short_repr(value)})") from None
    if vector.dim() != 1 or len(vector) != size:
        raise _bad(source, key, f"{tuple(vector.shape)} values, expected ({size},)")
    if not bool(torch.isfinite(vector).all()) or (positive and not bool((vector > 0).all())):
        which = "finite positive" if positive else "finite"
        raise _bad(source, key, f"not all {which} numbers")
    return vector


def _names(value: Any, source: str, key: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _bad(source, key, f"not a list of names ({short_repr(value)})")
    return list(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(source: str, key: str, reason: str) -> RunDirError:
    field = f"inference data{f' ({key})' if key else ''}"
    return RunDirError(f"{source}: {field}: {reason}")

"""A run's trained model, ready for new inputs: what `predict` and `export` start from.

Built from the checkpoint alone (its inference data gives the input shape and the outputs), so
using a model never reads the training data, except for a checkpoint older than that entry
(`inference_meta.of_checkpoint`, which says so in a notice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kan_engine import inference_meta, run_setup
from kan_engine.datasets import Raw
from kan_engine.inference_meta import InferenceMeta
from kan_engine.run_setup import RunCheckpoint


@dataclass
class Trained:
    """The checkpoint, its inference data and its model (eval mode, the evaluated weights)."""

    checkpoint: RunCheckpoint
    meta: InferenceMeta
    model: nn.Module
    notices: list[str] = field(default_factory=list)

    @property
    def args(self) -> dict[str, Any]:
        """The model's build arguments (`run_setup.model_args`)."""
        meta = self.meta
        return run_setup.model_args(self.checkpoint.config, meta.input_shape, meta.outputs)


def load(
    run_dir: Path, which: str, *, device: torch.device | None = None, raw: Raw | None = None
) -> Trained:
    """The model of `which` checkpoint ("best" / "last") on `device` (default: the run's);
    `raw`: the run's data when it is read already (an old checkpoint's statistics come from it)."""
    opened = run_setup.open_checkpoint(run_dir, which, device)
    meta, notice = inference_meta.of_checkpoint(opened.state, opened.path, opened.config, raw=raw)
    model = run_setup.build_for(opened.config, meta.input_shape, meta.outputs, opened.device)
    opened.load_into(model)
    model.eval()
    return Trained(opened, meta, model, [notice] if notice else [])

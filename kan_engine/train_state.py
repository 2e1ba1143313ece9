"""What a checkpoint of a training run holds, and putting it back when the run resumes.

A checkpoint is the whole position: the step's parts (`TrainStep.state_dict`: model, optimizer,
schedule, scaler, weight average), the gradient-norm history, the grid-update random stream, every
generator's state, the epoch and the steps done in it, the loop's `Counters`, the config as plain
data, the preset and the byte offset of `metrics.jsonl`; and, for using the model without the run's
data (`predict`, `export`), the inference data of `inference_meta` (`data`). A resume restores
each, the random generators last (building the model consumed random numbers); the data order needs
none of them, being a pure function of (seed, epoch) that the loop replays with `skip`.
`resume_plan.RESUME_KEYS` lists what a resume needs; `checkpoint.py` says how the file is written
and read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kan_engine import checkpoint as ckpt
from kan_engine import inference_meta, runs
from kan_engine.config import to_data
from kan_engine.counters import Counters
from kan_engine.data import DataBundle
from kan_engine.grid_policy import GridPolicy
from kan_engine.monitor import GradNormMonitor
from kan_engine.run_folder import RunFolder
from kan_engine.train_step import TrainStep


class TrainState:
    """Checkpoints of one run: written through `folder`, restored into the parts given."""

    def __init__(
        self,
        folder: RunFolder,
        step: TrainStep,
        monitor: GradNormMonitor,
        grids: GridPolicy,
        preset: str,
        data: DataBundle,
    ) -> None:
        self.folder, self.step, self.monitor, self.grids = folder, step, monitor, grids
        self.data = data
        self.config, self.preset, self.dist = step.config, preset, step.dist

    def save(
        self, which: str, reason: str, epoch: int, position: tuple[int, int], c: Counters
    ) -> None:
        """Write last.pt or best.pt (`which`) at `position` (epoch, steps done in it)."""
        self.folder.save_checkpoint(which, reason, epoch, lambda: self.state_dict(position, c))

    def state_dict(self, position: tuple[int, int], c: Counters) -> dict[str, Any]:
        epoch, step_in_epoch = position
        return {
            **self.step.state_dict(),  # model, optimizer, schedule, scaler, ema
            "monitor": self.monitor.state_dict(),
            "rng": ckpt.rng_state(),
            "grid_rng": self.grids.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "counters": dataclasses.asdict(c),
            "config": to_data(self.config),
            "preset": self.preset,
            "metrics_offset": self.folder.metrics.offset,
            "data": inference_meta.of_bundle(self.data),
        }

    def restore(
        self, state: dict[str, Any], *, restart_patience: bool
    ) -> tuple[int, int, Counters]:
        """Load last.pt's `state` into the parts; returns the position and the counters.
        `restart_patience`: an early-stopped run extended counts stale epochs from here."""
        path = runs.checkpoint_path(self.folder.path, "last")
        with ckpt.fitting(path, str(self.folder.path / runs.CONFIG)):
            self.step.load_state_dict(state)
            self.monitor.load_state_dict(state["monitor"])
            self.grids.load_state_dict(state["grid_rng"])
            position = int(state["epoch"]), int(state["step_in_epoch"])
            c = Counters(**state["counters"])
            ckpt.set_rng_state(state["rng"])  # last: building the model consumed random numbers
        if restart_patience:
            c.patience_from = c.epochs_run
        if not self.dist.is_main:  # the epoch's sums so far are every rank's: count them once
            c.epoch_loss = c.epoch_correct = 0.0
            c.epoch_samples = 0
        return (*position, c)

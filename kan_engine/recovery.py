"""What a non-finite training step does: skip it, and restore or give up when they keep coming.

A non-finite loss or gradient norm skips the step (the optimizer never applied it: `train_step.py`
skips it on the device), counted, with a warning naming the first layer whose output or gradient
went non-finite (the trainer re-runs the batch with hooks, only for the first of a streak).
MAX_BAD_STREAK skipped steps in a row restore the in-memory copy of the last epoch end and halve
every LR; after MAX_RESTORES restores the next streak stops the run as `diverged`.

The policy runs at read-back (`Trainer._settle`), when the host first sees a step's finite flag.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from kan_engine import optim
from kan_engine.counters import Counters
from kan_engine.events import Event, GradNormWarning, Notice
from kan_engine.train_step import TrainStep

MAX_BAD_STREAK = 3  # non-finite steps in a row before restoring the last good state
MAX_RESTORES = 2  # restores (each halving the LR) before the run is declared diverged

Diagnose = Callable[[int, tuple[Tensor, Tensor]], str]  # (global step, batch) -> layer named


class Recovery:
    """The non-finite policy over `step`'s model and optimizer; keeps the last good state."""

    def __init__(self, step: TrainStep, diagnose: Diagnose, emit: Callable[[Event], None]) -> None:
        self.step = step
        self.diagnose = diagnose
        self.emit = emit
        self.diverged = False
        self.remember()

    def remember(self) -> None:
        """Take an in-memory copy of model and optimizer: the "last good state"."""
        step = self.step
        self._good: dict[str, Any] = copy.deepcopy(
            {"model": step.model.state_dict(), "optimizer": optim.portable_state(step.optimizer)}
        )

    def non_finite_step(
        self, c: Counters, step: int, norm: float, batch: tuple[Tensor, Tensor]
    ) -> GradNormWarning:
        """Count a skipped step and act on the streak; returns the warning that says what was
        done (`diverged` is set when nothing is left to try)."""
        c.skipped_steps += 1
        c.bad_streak += 1
        layer = self.diagnose(step, batch) if c.bad_streak == 1 else None
        self._repair_buffers()
        action = "skipped step"
        if c.bad_streak >= MAX_BAD_STREAK:
            if c.restores >= MAX_RESTORES:
                self.diverged = True
                action = f"skipped step; {c.restores} restores did not help: diverged"
            else:
                self._restore(c)
                action = "skipped step; restored last good state, lr halved"
        return GradNormWarning(step, norm, math.inf, "non-finite", action, layer)

    def _repair_buffers(self) -> None:
        """A skipped step's forward may have put NaN into BatchNorm running statistics: take
        those buffers from the last good state (one check, only after a non-finite step)."""
        good = self._good["model"]
        with torch.no_grad():
            for name, buf in self.step.model.named_buffers():
                if buf.is_floating_point() and not torch.isfinite(buf).all():
                    buf.copy_(good[name])

    def _restore(self, c: Counters) -> None:
        step, schedule = self.step, self.step.schedule
        step.model.load_state_dict(self._good["model"])
        # a copy: loading may alias the snapshot's tensors, which later steps would then modify
        optim.load_state(step.optimizer, copy.deepcopy(self._good["optimizer"]))
        if step.graphed is not None:  # the loaded optimizer state lives in new tensors
            step.graphed.reset()
        schedule.scale *= 0.5
        schedule.apply(c.global_step)
        c.restores += 1
        c.bad_streak = 0
        self.emit(
            Notice(
                f"{MAX_BAD_STREAK} non-finite steps in a row: restored the state of the last "
                f"epoch end, learning rates halved (now x{schedule.scale:g} of the schedule)",
                "warning",
            )
        )

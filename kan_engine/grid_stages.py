"""Grid extension: train on a coarse grid, then refine it stage by stage (`kan.grid_schedule`).

The KAN paper's recipe for fitting functions: a KAN's accuracy is bounded by its grid, and a fine
grid trained from the start fits slowly and badly, so each stage trains `kan.grid_stage_epochs`
epochs on its grid and the next one starts from the same function on a finer grid. The refine is
`KANLinear.update_grid(..., grid_size=G)`: knots placed on the layer's inputs (a batch of the
training split, the layers read in order), coefficients fitted by least squares to keep the
function (`grid_refit.py`).

Why the stage is derived from the epoch and the layers' own grid size, never stored: a resumed run
and `eval` build the model at the first grid, and a checkpoint from a later stage loads into it
(the layer takes the stored grid's size); the loop then refines exactly when the layers' grid
differs from the stage's, which is at a stage's first epoch whether or not the run was resumed.

What a refine restarts: the optimizer's state (its moments, or L-BFGS's curvature pairs, belong
to coefficients that no longer exist), and the grid-update counting of `grid_policy.py`, which is
relative to the stage's first step (`stage_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kan_engine.config import KanSection


class GridStages:
    """The stages of `kan.grid_schedule` for KAN layers `kan` (name -> layer)."""

    def __init__(self, section: KanSection, kan: dict[str, nn.Module], steps_per_epoch: int):
        self.section, self.kan, self.steps_per_epoch = section, kan, steps_per_epoch
        self.grids = section.stage_grids()

    @property
    def active(self) -> bool:
        return len(self.grids) > 1 and bool(self.kan)

    def grid_for(self, epoch: int) -> int:
        return self.grids[self.section.stage_of(epoch)]

    def stage_step(self, step: int, epoch: int) -> int:
        """Global `step` counted from the first step of `epoch`'s stage."""
        stage = self.section.stage_of(epoch)
        return step - stage * self.section.grid_stage_epochs * self.steps_per_epoch

    def due(self, epoch: int) -> int | None:
        """The grid size to refine to before `epoch` trains, or None when the layers have it."""
        if not self.active:
            return None
        size = self.grid_for(epoch)
        return None if all(layer.grid_size == size for layer in self.kan.values()) else size

    @torch.no_grad()
    def refine(self, size: int, inputs: dict[str, Tensor]) -> None:
        """Every layer onto a grid of `size` intervals, fitted to its `inputs` (N, in)."""
        for name, layer in self.kan.items():
            layer.update_grid(
                inputs[name],
                keep_range=self.section.grid_keep_range,
                grid_size=size,
                margin_share=self.section.grid_margin,
            )

"""One training step captured as a CUDA graph and replayed: one launch instead of hundreds.

At the batch sizes of the presets (16 to 512) a GPU step is bound by the host launching kernels:
Rapid KAN lite at batch 64 on an H200 took 8.3 ms per step for 229 kernels that keep the GPU busy
for about 0.9 ms (`bench/step_profile.py`). Replaying a captured graph costs one launch.

The step function (forward, backward, clipping, the fused optimizer step with its device-side
skip flag) is captured once after `WARMUP` eager calls (lazy optimizer state, compiled kernels,
cuBLAS workspaces all exist by then) and replayed for every later batch of the same shape; the
batch is copied into the graph's static input buffers first. What the graph bakes in, the caller
keeps fixed or calls `reset` after changing: parameters, buffers and optimizer state must be
updated in place (grid updates and BatchNorm are; `Optimizer.load_state_dict` is not, so the
trainer resets after a restore), and learning rates must be device tensors (`optim.Schedule`
fills them in place). Steps the graph cannot take (a grid update with its hooks, the shorter last
batch of an epoch) run eagerly between replays; they share the same parameters and optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from kan_engine.config import RunConfig

__all__ = ["GraphedStep", "usable"]

WARMUP = 3  # eager calls before the capture


def usable(
    config: RunConfig, device: torch.device, *, distributed: bool, use_scaler: bool
) -> tuple[bool, str]:
    """Whether training steps are replayed as a CUDA graph, and the notice to give: why not when
    the config asks for graphs on CUDA and something else rules them out ("" when the config does
    not ask for graphs, or the device is not CUDA)."""
    if not config.train.cuda_graphs or device.type != "cuda":
        return False, ""
    blockers = {
        "torchrun (DistributedDataParallel)": distributed,
        "fp16 (the loss scaler reads its flag every step)": use_scaler,
        "train.compile (torch.compile manages its own graphs)": config.train.compile,
        "sgd (no capturable fused step)": config.optim.optimizer == "sgd",
        "lbfgs (its line search reads the loss back)": config.optim.optimizer == "lbfgs",
        "lm (each step solves on the host's terms)": config.optim.optimizer == "lm",
        "kan.grid_schedule (each stage changes the layers' shapes)": bool(config.kan.grid_schedule),
    }
    reasons = [reason for reason, blocks in blockers.items() if blocks]
    if reasons:
        return False, f"train.cuda_graphs: off with {', '.join(reasons)}"
    return True, "training steps replayed as a CUDA graph"


class GraphedStep:
    """`step(x, y) -> values` (any device tensor), run eagerly `WARMUP` times, then replayed.

    Every call must bring a batch of the same shape (the trainer passes full batches only)."""

    def __init__(self, step: Callable[[Tensor, Tensor], Tensor]) -> None:
        self._step = step
        self._eager_calls = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[Tensor, Tensor] | None = None
        self._out: Tensor | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """The step's values for this batch; a copy when replayed (the next replay overwrites)."""
        if self._graph is None and self._eager_calls < WARMUP:
            self._eager_calls += 1
            return self._step(x, y)
        if self._graph is None:
            self._inputs = (x.clone(), y.clone())  # (N, ...), (N,): the static input buffers
            self._capture()
        assert self._graph is not None and self._inputs is not None and self._out is not None
        sx, sy = self._inputs
        sx.copy_(x)
        sy.copy_(y)
        self._graph.replay()
        return self._out.clone()

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        assert self._inputs is not None
        device = self._inputs[0].device
        with torch.cuda.device(device):  # cuda:1 too, whatever device is current
            torch.cuda.synchronize(device)
            with torch.cuda.graph(graph):
                self._out = self._step(*self._inputs)  # recorded, not run: the caller replays
        self._graph = graph

    def reset(self) -> None:
        """Forget the capture (its memory too); the next calls warm up and capture again."""
        self._graph = None
        self._inputs = self._out = None
        self._eager_calls = 0

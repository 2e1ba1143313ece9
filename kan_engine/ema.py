"""An exponential moving average of the weights: what validation, `best.pt` and the test see.

Why. With the presets' large KAN heads the raw weights of the last steps carry the noise of the
last few batches; their average over the recent past generalises better (Polyak averaging; the
EMA that timm and most image recipes keep). Training itself never reads the average.

On the device, no host sync. `update()` runs inside the training step, so a CUDA graph captures
it with the rest: the number of updates is a device tensor, and the decay of an update is
`min(decay, (1 + t) / (10 + t))`, so the average follows the weights closely while they move fast
early on (the first epochs' accuracy is the average's too) and reaches `decay` later.

Trainable parameters and the BatchNorm running statistics are averaged. The statistics must follow
the weights they describe: averaged weights read with the raw model's statistics were measured to
swing between 76 and 91 % test in the peak-LR epochs. KAN grids stay the model's own (an average of
coefficients is only meaningful on one grid: a layer whose grid is refit restarts its average,
`restart`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The average of `model`'s trainable parameters and BatchNorm statistics, updated in place
    by `update()`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1) (got {decay})")
        self.decay = decay
        tracked = _averaged(model)
        self._names = [name for name, _ in tracked]
        self._params = [tensor for _, tensor in tracked]
        self._shadow = [p.detach().clone() for p in self._params]
        self._index = {id(p): i for i, p in enumerate(self._params)}
        self._model = model
        self.updates = torch.zeros((), device=self._params[0].device)  # device-side count

    @torch.no_grad()
    def update(self) -> None:
        """shadow += (1 - d) * (param - shadow), d = min(decay, (1 + t) / (10 + t))."""
        self.updates += 1
        decay = torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
        delta = torch._foreach_sub(self._params, self._shadow)
        torch._foreach_mul_(delta, 1 - decay)
        torch._foreach_add_(self._shadow, delta)

    @torch.no_grad()
    def restart(self, params: Iterable[nn.Parameter]) -> None:
        """Make these parameters' average their current value (after a grid refit)."""
        for param in params:
            i = self._index.get(id(param))
            if i is not None:
                self._shadow[i].copy_(param)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own after it. Values are
        copied in place, so the tensors a CUDA graph or the optimizer hold stay the same."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self._params]
            torch._foreach_copy_(self._params, self._shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._params, kept)

    def model_state(self) -> dict[str, Tensor]:
        """The model's state dict with the averaged parameters: loads into a model as is."""
        state = dict(self._model.state_dict())
        for name, shadow in zip(self._names, self._shadow, strict=True):
            state[name] = shadow.detach().clone()
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model_state(), "updates": int(self.updates.item())}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["model"]
        for name, shadow in zip(self._names, self._shadow, strict=True):
            shadow.copy_(saved[name])
        self.updates.fill_(int(state["updates"]))


def _averaged(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Trainable parameters, then the floating BatchNorm statistics (running mean and variance)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for stat in ("running_mean", "running_var"):
                buffer = getattr(module, stat)
                if buffer is not None:
                    named.append((f"{prefix}.{stat}" if prefix else stat, buffer))
    return named

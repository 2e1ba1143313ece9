"""Training health without a host sync per step: gradient norms, non-finite steps, culprits.

Reading a value back from the GPU (`.item()`, `.tolist()`) stalls the host until the device has
caught up, so the trainer never does it per step. Each step's loss, correct count, gradient norm
and finite flag stay on the device in `PendingSteps`; they are read back together in one transfer
at most once per logging interval (`drain`). `GradNormMonitor` then looks at the norms on the host
(spikes against a running median, vanishing norms). Only when a non-finite step was seen does
`find_nonfinite_layer` re-run that batch with hooks that check every module's output and gradient:
the expensive checks cost nothing on healthy runs.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kan_engine.events import GradNormWarning

SPIKE_FACTOR = 10.0  # spike: above 10x the running median (10x the clip norm early on)
VANISHING = 1e-8  # a total gradient norm below this means nothing is learning
HISTORY = 256  # norms kept for the running median
MIN_HISTORY = 20  # below this many norms, spikes are judged against the clip norm instead


@dataclass(frozen=True)
class StepHealth:
    """One step's values after read-back."""

    global_step: int
    loss: float
    correct: float
    n: int
    norm: float
    ok: bool  # loss and gradient norm finite (the optimizer step was applied)
    batch: tuple[Tensor, Tensor]  # kept so a non-finite step can be re-run for diagnosis


class PendingSteps:
    """Per-step values kept on the device until `drain` reads them all back in one transfer."""

    def __init__(self) -> None:
        self._values: list[Tensor] = []
        self._meta: list[tuple[int, tuple[Tensor, Tensor]]] = []

    @staticmethod
    def pack(loss: Tensor, correct: Tensor, norm: Tensor, ok: Tensor) -> Tensor:
        """One step's values as the (4,) tensor `add` takes."""
        return torch.stack([loss.detach().float(), correct.float(), norm.float(), ok.float()])

    def add(self, global_step: int, values: Tensor, batch: tuple[Tensor, Tensor]) -> None:
        """`values` from `pack`; `batch` is kept for diagnosing a non-finite step."""
        self._values.append(values)  # (4,)
        self._meta.append((global_step, batch))

    def __len__(self) -> int:
        return len(self._values)

    def drain(self) -> list[StepHealth]:
        """Read back every pending step (one device sync) and forget them."""
        if not self._values:
            return []
        rows = torch.stack(self._values).tolist()  # (steps, 4) -> host
        out = [
            StepHealth(step, loss, correct, len(batch[1]), norm, bool(ok), batch)
            for (loss, correct, norm, ok), (step, batch) in zip(rows, self._meta, strict=True)
        ]
        self._values.clear()
        self._meta.clear()
        return out


class GradNormMonitor:
    """Judges finite gradient norms on the host, after read-back.

    A spike is a norm above SPIKE_FACTOR x the running median of recent norms (before MIN_HISTORY
    norms are known: SPIKE_FACTOR x the clip norm). A vanishing norm is below VANISHING. At most one
    warning per reason is returned per read-back (the worst), so a burst of spikes gives one line
    per logging interval instead of flooding the log.
    """

    def __init__(self, clip: float) -> None:
        self.clip = clip
        self.history: deque[float] = deque(maxlen=HISTORY)

    def threshold(self) -> float:
        if len(self.history) >= MIN_HISTORY:
            return SPIKE_FACTOR * statistics.median(self.history)
        return SPIKE_FACTOR * self.clip if self.clip > 0 else float("inf")

    def scan(self, steps: list[tuple[int, float]]) -> list[GradNormWarning]:
        """(global_step, norm) of finite steps in order -> warnings, worst per reason."""
        worst: dict[str, GradNormWarning] = {}
        for step, norm in steps:
            limit = self.threshold()
            if norm < VANISHING:
                if "vanishing" not in worst or norm < worst["vanishing"].norm:
                    worst["vanishing"] = GradNormWarning(step, norm, VANISHING, "vanishing", "none")
            elif norm > limit and ("spike" not in worst or norm > worst["spike"].norm):
                action = f"clipped to {self.clip:g}" if 0 < self.clip < norm else "none"
                worst["spike"] = GradNormWarning(step, norm, limit, "spike", action)
            self.history.append(norm)
        return sorted(worst.values(), key=lambda w: w.global_step)

    def state_dict(self) -> dict[str, list[float]]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.history = deque(state["history"], maxlen=HISTORY)


@contextlib.contextmanager
def keep_buffers(model: nn.Module) -> Iterator[None]:
    """Undo buffer changes (BatchNorm running statistics) made by forwards inside the block."""
    saved = {name: buf.clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])


def find_nonfinite_layer(model: nn.Module, run: Callable[[], Tensor]) -> str:
    """Re-run one step with checking hooks and name where it first went non-finite.

    `run()` does the forward pass and returns the loss; this function does the backward. Returns
    "<module path> (output)" for the first module (in completion order, so the innermost) whose
    output is non-finite, else "loss" when only the loss is, else "<module path> (gradient)" for
    the first output gradient that is non-finite in backward order (the layer nearest the loss
    where it started), else the first parameter with a non-finite gradient, else "not reproduced".
    Buffers (BatchNorm statistics) are restored and gradients cleared afterwards, so the
    diagnosis leaves no trace in training.
    """
    forward_bad: list[str] = []
    backward_bad: list[str] = []

    def grad_hook(name: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            if not backward_bad and not torch.isfinite(grad).all():
                backward_bad.append(f"{name} (gradient)")

        return hook

    def forward_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return
            if not forward_bad and not torch.isfinite(output).all():
                forward_bad.append(f"{name} (output)")
            if output.requires_grad:
                output.register_hook(grad_hook(name))

        return hook

    handles = [
        module.register_forward_hook(forward_hook(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with keep_buffers(model):
            loss = run()
            if forward_bad:
                return forward_bad[0]
            if not torch.isfinite(loss).all():
                return "loss"
            loss.backward()
            if backward_bad:
                return backward_bad[0]
            for name, param in model.named_parameters():
                if param.grad is not None and not torch.isfinite(param.grad).all():
                    return f"{name} (gradient)"
            return "not reproduced"
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)

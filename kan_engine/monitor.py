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
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kan_engine.events import GradNormWarning

SPIKE_FACTOR = 10.0  # spike: at least 10x the running median of recent norms ...
SPIKE_SIGMAS = 5.0  # ... and 5 robust standard deviations above it, in log space
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation of a normal
VANISHING = 1e-8  # a total gradient norm below this means nothing is learning
HISTORY = 256  # norms kept for the running median
MIN_HISTORY = 20  # norms seen before spikes are judged: the first steps have no "normal" yet


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

    A spike is a norm far outside what this run's recent norms make normal: above the running
    median of the last HISTORY norms by SPIKE_FACTOR and by SPIKE_SIGMAS robust standard
    deviations of log(norm) (whichever is more), and, when clipping is on, above the clip norm
    too. Why: a healthy run's norms are heavy-tailed (late in training most batches are fit and
    their norms tiny, one hard batch is 10-50x the median: a fixed 10x flooded a healthy lite run
    with 1,847 warnings), and a step that clipping leaves untouched changes the weights no more
    than a normal step does. The first MIN_HISTORY steps are not judged (a fresh model's norms are
    large, and clipping takes them). A vanishing norm is below VANISHING, judged unless
    `vanishing` is off: a full-batch fit by lbfgs or lm that converges ends at a zero gradient, as
    it should (a converged Levenberg-Marquardt stage read as dozens of warnings). At most one
    warning per reason is returned per read-back (the worst), so a burst gives one line per
    logging interval. Non-finite steps are the trainer's business and are always reported.
    """

    def __init__(self, clip: float, *, vanishing: bool = True) -> None:
        self.clip = clip
        self.vanishing = vanishing
        self.history: deque[float] = deque(maxlen=HISTORY)

    def threshold(self) -> float:
        if len(self.history) < MIN_HISTORY:
            return float("inf")
        logs = [math.log(max(norm, VANISHING)) for norm in self.history]
        centre = statistics.median(logs)
        sigma = MAD_TO_SIGMA * statistics.median(abs(v - centre) for v in logs)
        spread = max(math.log(SPIKE_FACTOR), SPIKE_SIGMAS * sigma)
        return max(math.exp(centre + spread), self.clip)

    def scan(self, steps: list[tuple[int, float]]) -> list[GradNormWarning]:
        """(global_step, norm) of finite steps in order -> warnings, worst per reason. The
        threshold is computed once per read-back (per step while the history is short)."""
        worst: dict[str, GradNormWarning] = {}
        limit = self.threshold()
        for step, norm in steps:
            if len(self.history) < MIN_HISTORY:
                limit = self.threshold()
            if norm < VANISHING:
                weaker = "vanishing" in worst and norm >= worst["vanishing"].norm
                if self.vanishing and not weaker:
                    worst["vanishing"] = GradNormWarning(step, norm, VANISHING, "vanishing", "none")
            elif norm > limit and ("spike" not in worst or norm > worst["spike"].norm):
                action = f"clipped to {self.clip:g}" if 0 < self.clip < norm else "none"
                worst["spike"] = GradNormWarning(step, norm, limit, "spike", action)
            self.history.append(norm)
        return sorted(worst.values(), key=lambda w: w.global_step)

    def state_dict(self) -> dict[str, list[float]]:
        return {"history": list(self.history)}

    def restart(self) -> None:
        """Forget the norms seen: after grid extension the gradients have another scale (more,
        narrower basis functions), and the old ones would make every new norm a "spike"."""
        self.history.clear()

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

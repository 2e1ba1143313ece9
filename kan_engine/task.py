"""What a run learns: a classification (cross-entropy, accuracy) or a regression (mean squared
error on standardised targets; RMSE, MAE and R² in the targets' own units).

Why one object: the loss, what a training step counts beside it, what an evaluation sums and
which metric picks the best epoch all change together with the task, and every place that
trains or evaluates (the step, the split evaluation, compare, eval) asks this object instead of
branching on the task itself.

Regression targets are standardised per output on the training split (`DataBundle` holds them
so), which puts every output's loss on one scale whatever its units; the metrics undo it:
RMSE and MAE are over all outputs in their units, R² is the mean of the outputs' R²
(scikit-learn's `uniform_average`). Best epoch and early stopping follow the validation RMSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kan_engine import headline

Kind = Literal["classification", "regression"]
KINDS: tuple[Kind, ...] = ("classification", "regression")


@dataclass(frozen=True)
class Task:
    """The task of one data bundle; `target_std` (T,) is on the bundle's device (regression)."""

    kind: Kind
    target_std: Tensor | None = None

    @property
    def regression(self) -> bool:
        return self.kind == "regression"

    @property
    def selection(self) -> str:
        """The validation metric that picks the best epoch (lower is better for RMSE)."""
        return headline.metric(self.kind)

    def better(self, value: float, best: float | None) -> bool:
        """Whether `value` of the selection metric beats `best` (None: nothing yet)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best if self.regression else value > best

    def objective(
        self, out: Tensor, y: Tensor, smoothing: float = 0.0, huber_delta: float = 0.0
    ) -> tuple[Tensor, Tensor]:
        """(objective to minimise, the plain loss reported beside it); out (N, C or T) float.
        A regression's reported loss is the mean squared error whatever it minimises (Huber
        with `huber_delta` > 0: quadratic within delta standard deviations, linear beyond, so
        a few wild targets pull less), comparable with the validation loss."""
        if self.regression:
            loss = F.mse_loss(out, y)
            if huber_delta > 0:
                return F.huber_loss(out, y, delta=huber_delta), loss.detach()
            return loss, loss
        objective = F.cross_entropy(out, y, label_smoothing=smoothing)
        # the loss reported is the plain cross-entropy, comparable with the validation loss
        return objective, F.cross_entropy(out.detach(), y) if smoothing else objective

    def step_stat(self, out: Tensor, y: Tensor) -> Tensor:
        """What a training step counts beside its loss: correct predictions, or the sum over
        the batch of the mean squared error over outputs in target units (train RMSE)."""
        if self.regression:
            return self._squared_error(out.detach(), y).mean(1).sum()
        return (out.argmax(1) == y).sum()

    def _squared_error(self, out: Tensor, y: Tensor) -> Tensor:
        """(N, T) squared errors in target units."""
        return ((out - y) * self.target_std).square()

    def eval_sums(self, out: Tensor, y: Tensor) -> Tensor:
        """One evaluation batch's sums, added up over a split then handed to `metrics`:
        (loss, correct) or (loss, absolute error, squared error of each output)."""
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        if not self.regression:
            loss = F.cross_entropy(out, y, reduction="sum")
            return torch.stack([loss, (out.argmax(1) == y).sum().float()])
        loss = F.mse_loss(out, y, reduction="sum") / y.shape[1]
        absolute = ((out - y) * self.target_std).abs().mean(1).sum()
        return torch.cat([loss[None], absolute[None], self._squared_error(out, y).sum(0)])

    def sums_size(self) -> int:
        return 2 if not self.regression else 2 + len(self.target_std)

    def metrics(self, sums: list[float], n: int, total_squares: list[float]) -> dict[str, float]:
        """A split's metrics from its summed `eval_sums` over `n` samples; `total_squares` (T,)
        are the split's sums of squared deviations from its own target means (R²)."""
        if not self.regression:
            loss, correct = sums
            return {"loss": loss / n, "acc": correct / n}
        loss, absolute, *squared = sums
        outputs = len(squared)
        pairs = zip(squared, total_squares, strict=True)
        r2 = [1.0 - sse / sst if sst > 0 else math.nan for sse, sst in pairs]
        return {
            "loss": loss / n,
            "rmse": math.sqrt(sum(squared) / (n * outputs)),
            "mae": absolute / n,
            "r2": sum(r2) / outputs,
        }


CLASSIFICATION = Task("classification")

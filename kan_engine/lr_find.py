"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates", section 3.3).

Train for a few hundred steps while the LR grows exponentially from `start` to `end`, record the
loss, and stop once it explodes. The loss is smoothed by an exponential moving average with bias
correction (the average of the first steps would otherwise be pulled towards zero).

The suggestion is the LR at the lowest smoothed loss divided by 10 (fastai's "minimum" rule).
The lowest point is where the loss stops improving and starts to blow up: a bound, not a choice.
Smith's rule of thumb (base LR a third or a quarter of the largest LR that still converges) is
too close to it, because the lowest smoothed point can lie well past the stable range: on the
least-squares test (gradient descent, stable below 2/L) it is at 6.6-7.0/L, since a converged
loss takes many steps to grow back from its floor; a tenth lands at 0.66-0.70/L.
With no fall there is no suggestion: the lowest point must come after the first tenth of the
sweep (where the moving average still settles) and lie at least 5 % below the loss there.

Why not the steepest fall of the smoothed loss against log(LR), the rule used before: it finds
where the model starts to learn, not how fast it can learn. Rapid KAN lite on Fashion-MNIST
(`kan-tui lr-find --preset lite --device cpu`, AdamW, 200 steps from 1e-7, seeds 0/1/2) already
learns at 1e-5: the raw loss falls from 2.3 to about 0.6 between 3e-6 and 2e-5, stays there up
to about 1e-3 and rises after (4.0 at 1e-2). Steepest fall: 1.6e-5/1.6e-5/2.2e-5; lowest smoothed
loss: 1.4e-3/1.1e-3/2.0e-3, so the suggestion is 1.4e-4/1.1e-4/2.0e-4. One epoch at a constant
base LR (lite, 30k training images, val_fraction 0.5) gave val accuracy 87.8 % at 1.38e-4,
85.4 % at 4.6e-4 and 85.9 % at 1e-3 (73.9 % at 4e-3 in an earlier session). The other rules tried
on these sweeps also find the start of learning: fastai's "valley" (half-way down the longest
falling stretch, here everything from 1e-7 to the lowest point) 2.2e-5/1.8e-5/2.6e-5, and the
steepest fall after half of the total fall 4.9e-5/4.9e-5/5.9e-5.

`range_test` works on any model and optimizer and puts the model, the optimizer and the random
generators back as they were afterwards; `find_lr` runs it on a config's model and data with the
trainer's optimizer, autocast dtype, clipping and per-group LR multipliers. It leaves out grid
updates (they adapt the basis to the data, which has nothing to do with the optimizer's stable
range), the KAN regulariser and fp16 loss scaling: the sweep measures plain cross-entropy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kan_engine.config import RunConfig
from kan_engine.datasets import Raw
from kan_engine.errors import ConfigError

__all__ = ["LRFinderResult", "find_lr", "range_test", "suggest"]

START, END, STEPS = 1e-7, 10.0, 200
BETA = 0.98  # EMA factor of the smoothed loss
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of the best one
SKIP_START = 0.1  # share of the first points where the EMA still settles (no minimum there)
MIN_FALL = 0.05  # the lowest smoothed loss must be this share below the settled start
DIVISOR = 10.0  # suggestion = LR at the lowest smoothed loss / DIVISOR

Batch = tuple[Tensor, Tensor]


@dataclass
class LRFinderResult:
    lrs: list[float] = field(default_factory=list)  # base LR of each step
    losses: list[float] = field(default_factory=list)  # raw loss of each step
    smoothed: list[float] = field(default_factory=list)  # bias-corrected EMA
    suggestion: float | None = None
    stop_reason: str = "end of sweep"

    @property
    def best_lr(self) -> float | None:
        """The LR at the minimum of the smoothed loss (too large to train with: a bound)."""
        lowest = _lowest(self.smoothed)
        return None if lowest is None else self.lrs[lowest]


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The LR at the lowest `smoothed` loss divided by DIVISOR, or None when the loss never fell:
    the lowest point lies in the first SKIP_START of the sweep, or less than MIN_FALL below the
    loss there. Non-finite values (the point that stopped a sweep) are never the lowest."""
    lowest = _lowest(smoothed)
    settled = round(SKIP_START * len(smoothed))
    if lowest is None or lowest <= settled or not math.isfinite(smoothed[settled]):
        return None
    if smoothed[lowest] > (1 - MIN_FALL) * smoothed[settled]:
        return None
    return lrs[lowest] / DIVISOR


def _lowest(smoothed: list[float]) -> int | None:
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    return min(finite, key=smoothed.__getitem__) if finite else None


def range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    *,
    start: float = START,
    end: float = END,
    steps: int = STEPS,
    multipliers: list[float] | None = None,
    clip_grad_norm: float = 0.0,
    diverge: float = DIVERGE,
    progress: Callable[[int, float, float], None] | None = None,
) -> LRFinderResult:
    """Sweep the LR from `start` to `end` in `steps` steps; restore everything afterwards.

    Param group g gets `lr * multipliers[g]` (default 1 each), so the result is the base LR of a
    config whose groups have LR multipliers. `progress(step, lr, loss)` is called every step.
    The model's and optimizer's states (BatchNorm statistics and KAN grids included) and the
    torch generators are put back in a `finally`, also when the sweep raises.
    """
    if not 0 < start < end:
        raise ValueError(f"range_test: need 0 < start < end (got {start}, {end})")
    if steps < 5:
        raise ValueError(f"range_test: need at least 5 steps (got {steps})")
    mult = multipliers or [1.0] * len(optimizer.param_groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    was_training = model.training
    result = LRFinderResult()
    average, best = 0.0, math.inf
    with torch.random.fork_rng(devices=_devices(params)):
        try:
            model.train()
            for step in range(steps):
                lr = start * (end / start) ** (step / (steps - 1))
                for group, m in zip(optimizer.param_groups, mult, strict=True):
                    group["lr"] = lr * m
                loss = loss_fn(model, next(batches))
                value = float(loss.detach())
                result.lrs.append(lr)
                result.losses.append(value)
                if not math.isfinite(value):
                    result.smoothed.append(math.inf)
                    result.stop_reason = f"non-finite loss at lr {lr:.3g}"
                    break
                average = BETA * average + (1 - BETA) * value
                smooth = average / (1 - BETA ** (step + 1))
                result.smoothed.append(smooth)
                if progress is not None:
                    progress(step, lr, value)
                if smooth > diverge * best:
                    result.stop_reason = f"loss above {diverge:g}x its minimum at lr {lr:.3g}"
                    break
                best = min(best, smooth)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(saved_optimizer)
            model.train(was_training)
    result.suggestion = suggest(result.lrs, result.smoothed)
    return result


def _devices(params: list[Tensor]) -> list[int]:
    """CUDA devices whose generators `fork_rng` must save (dropout, augmentation)."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


def _cycle(next_epoch: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from next_epoch(epoch)
        epoch += 1


def find_lr(
    config: RunConfig,
    *,
    steps: int = STEPS,
    start: float = START,
    end: float = END,
    progress: Callable[[int, float, float], None] | None = None,
    raw: Raw | None = None,
    notice: Callable[[str], None] | None = None,
) -> LRFinderResult:
    """The range test on `config`'s model, data and optimizer (the result is a base LR:
    `optim.lr`, which the per-group multipliers scale as in training); `raw`: the data as
    `data.read` gave it, if the caller has read it already; `notice` receives a line worth
    showing before a wait (the CPU extension's first build: `spline_gather.prepare`)."""
    from kan_engine import data as data_mod
    from kan_engine import models, optim, spline_gather
    from kan_engine.config import check_names
    from kan_engine.run_setup import build_model, pick_device, precision, seed_everything

    check_names(config)
    if config.optim.optimizer in optim.FULL_BATCH:
        how = "lbfgs's line search" if config.optim.optimizer == "lbfgs" else "lm's damping"
        reason = f"the LR range test is for adamw, adam and sgd: {how} sizes its steps"
        raise ConfigError("", "optim.optimizer", reason)
    device = pick_device(config.train.device)
    seed_everything(config.train.seed)
    bundle = data_mod.load(config.data, device=device, seed=config.train.seed, raw=raw)
    model = build_model(config, bundle, device)
    if notice is not None:
        spline_gather.prepare(model, device, notice)
    optimizer = optim.build_optimizer(config, models.param_groups(model), device)
    mult = config.optim.lr_mult
    multipliers = [getattr(mult, g["name"]) for g in optimizer.param_groups]
    amp_dtype = precision(config, device)[0]
    batch_size = config.train.batch_size

    def loss_fn(module: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = module(x)  # (N, classes or targets)
        return bundle.task.objective(out.float(), y)[1]  # cross-entropy, or a regression's MSE

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        return bundle.batches("train", batch_size, shuffle=True, epoch=epoch)

    return range_test(
        model,
        optimizer,
        _cycle(epoch_batches),
        loss_fn,
        start=start,
        end=end,
        steps=steps,
        multipliers=multipliers,
        clip_grad_norm=config.train.clip_grad_norm,
        progress=progress,
    )

"""Parameter groups, optimizers and learning-rate schedules.

The schedule is a pure function of the global step (`lr_factor`), so the TUI can draw the LR curve
of a preset before any training (`lr_curve`) and a resumed run lands on exactly the LR it left off
at: `Schedule` only stores the step and a scale (halved after a divergence recovery), never a
history. Each optimizer param group carries its group name (`cnn`, `kan`, `other`), so the LR of a
group is always `optim.lr * lr_mult[group] * factor * scale`.

Weight decay is applied to the `cnn` and `kan` groups only. The `other` group holds BatchNorm
weights, biases and learnable scales: decaying those pulls normalisation gains towards zero and
shifts activations, which costs accuracy and buys no regularisation (the usual practice since
"Bag of Tricks", Goyal et al. 2017).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from kan_engine.config import GROUPS, RunConfig, ScheduleSection
from kan_engine.errors import ConfigError
from kan_engine.levenberg_marquardt import MAX_PARAMETERS, LevenbergMarquardt

WARMUP_START = 0.01  # warm-up starts at lr / 100
ONECYCLE_RISE = 0.3  # one-cycle rise share when no warm-up is configured (as torch's OneCycleLR)
ONECYCLE_FLOOR = 0.01  # one-cycle ends at min_lr_ratio / 100, below the cosine floor
DECAYED_GROUPS = ("cnn", "kan")
SHORT_RUN_WARMUP = 0.1  # warm-up share of a run shorter than its configured warm-up
# How this process runs the optimizer, not what it learned: kept over a loaded state dict.
RUNTIME_FLAGS = ("fused", "foreach", "capturable")
LBFGS_HISTORY = 10  # curvature pairs L-BFGS keeps (torch's and pykan's default)
# Optimizers of full-batch fits: each step re-evaluates the batch and reads its loss back, one
# process only, a converged fit ends at a zero gradient, and their state describes the
# coefficients of one grid (the trainer forgets it when a grid is refit).
FULL_BATCH = ("lbfgs", "lm")


def warmup_capped(schedule: ScheduleSection, epochs: int) -> bool:
    """A warm-up as long as the run would leave no run after it: such runs (a preset's 5 warm-up
    epochs with `--epochs 3`) warm up over the first 10 % instead, and the trainer says so."""
    return schedule.warmup_epochs >= epochs > 0


def _warmup_steps(schedule: ScheduleSection, total: int, steps_per_epoch: int) -> int:
    warm = round(schedule.warmup_epochs * steps_per_epoch)
    if warm >= total:
        warm = round(SHORT_RUN_WARMUP * total)
    if schedule.name == "onecycle" and warm == 0:
        warm = round(ONECYCLE_RISE * total)
    return warm


def _cosine(progress: float, floor: float) -> float:
    """From 1 at progress 0 to `floor` at progress 1, half a cosine wave."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(schedule: ScheduleSection, epochs: int, steps_per_epoch: int, step: int) -> float:
    """The share of the base LR at 0-based global `step` (stepped per batch).

    Every schedule starts with a linear warm-up from lr/100 to lr over `warmup_epochs` (one-cycle
    uses 30 % of the run when no warm-up is set). After it: `constant` stays at 1; `step` multiplies
    by `gamma` every `step_epochs` epochs counted from the start; `cosine` falls to `min_lr_ratio`,
    reached exactly at the last step; `onecycle` falls the same way to `min_lr_ratio / 100`.
    """
    total = max(epochs * steps_per_epoch, 1)
    warm = _warmup_steps(schedule, total, steps_per_epoch)
    if step < warm:
        return WARMUP_START + (1.0 - WARMUP_START) * step / warm
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** ((step // max(steps_per_epoch, 1)) // schedule.step_epochs)
    span = total - 1 - warm
    progress = (step - warm) / span if span > 0 else 1.0
    floor = schedule.min_lr_ratio
    if schedule.name == "onecycle":
        floor *= ONECYCLE_FLOOR
    return _cosine(progress, floor)


def group_lrs(config: RunConfig, factor: float) -> dict[str, float]:
    """LR per group for a schedule factor: base LR x group multiplier x factor."""
    mult = config.optim.lr_mult
    return {name: config.optim.lr * getattr(mult, name) * factor for name in GROUPS}


def lr_curve(
    config: RunConfig, steps_per_epoch: int = 100, points: int = 200
) -> dict[str, list[tuple[float, float]]]:
    """(epoch, lr) samples per group over the whole run, for the TUI's LR preview."""
    epochs = config.train.epochs
    total = epochs * steps_per_epoch
    count = max(2, min(points, total))
    steps = sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})
    curve: dict[str, list[tuple[float, float]]] = {name: [] for name in GROUPS}
    for step in steps:
        lrs = group_lrs(config, lr_factor(config.schedule, epochs, steps_per_epoch, step))
        for name in GROUPS:
            curve[name].append((step / steps_per_epoch, lrs[name]))
    return curve


def build_optimizer(
    config: RunConfig,
    groups: dict[str, list[nn.Parameter]],
    device: torch.device,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """One optimizer param group per non-empty model group, tagged with its `name`.

    On CUDA every optimizer is fused (one launch for all parameters, and the kernels honour a
    device-side `found_inf` flag, which the trainer uses to skip non-finite steps without a host
    sync). Adam and AdamW are fused on the CPU too: one pass over the parameters instead of a
    dozen, which for Rapid KAN lite's 8.4 M parameters takes an AdamW step from 32 to 7 ms on one
    core, and a whole lite training step on the 2-core box from 133-138 to 96-98 ms.
    `capturable` (Adam/AdamW on CUDA) lets the step be captured in a CUDA graph; its LRs must
    then be device tensors (`Schedule(lr_device=...)`). The initial LRs are placeholders:
    `Schedule.apply` sets them before the first step.
    """
    opt = config.optim
    param_groups = [
        {
            "params": params,
            "name": name,
            "weight_decay": opt.weight_decay if name in DECAYED_GROUPS else 0.0,
        }
        for name, params in groups.items()
        if params
    ]
    if not param_groups:
        raise ValueError("the model has no trainable parameters")
    if opt.optimizer == "lbfgs":
        return _lbfgs(config, [p for group in param_groups for p in group["params"]])
    if opt.optimizer == "lm":  # one group named kan, as L-BFGS: its LR scales each step
        every = [p for group in param_groups for p in group["params"]]
        return LevenbergMarquardt([{"params": every, "name": "kan"}], lr=opt.lr)
    if opt.optimizer == "sgd":  # None: torch's default (foreach) off CUDA
        cuda = device.type == "cuda" or None
        return torch.optim.SGD(param_groups, lr=opt.lr, momentum=opt.momentum, fused=cuda)
    fused = device.type in ("cuda", "cpu") or None
    betas = (opt.beta1, opt.beta2)
    kind = torch.optim.Adam if opt.optimizer == "adam" else torch.optim.AdamW
    optimizer = kind(param_groups, lr=opt.lr, betas=betas, fused=fused, capturable=capturable)
    # the trainer runs some steps outside the graph on purpose (grid updates, short batches)
    optimizer._warned_capturable_if_run_uncaptured = True  # type: ignore[attr-defined]
    return optimizer


def check_least_squares(
    config: RunConfig, model: nn.Module, regression: bool, train_size: int
) -> None:
    """Refuse, naming `optim.optimizer`, an lm run it cannot fit: Levenberg-Marquardt minimises
    a sum of squares (no classification, no L1 regulariser) through a P x P system, over the
    whole training split (its damping and its "converged" mark describe one fixed problem: on
    changing batches a converged batch would end the training)."""
    if config.optim.optimizer != "lm":
        return
    size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reason = None
    if config.train.batch_size < train_size:
        reason = (
            f"lm fits the whole training split at once: set train.batch_size to at least "
            f"{train_size:,} (it is {config.train.batch_size:,})"
        )
    elif not regression:
        reason = "lm fits least squares: regression runs only (this data is a classification)"
    elif config.kan.reg_weight > 0:
        reason = "lm fits least squares: set kan.reg_weight to 0 (its L1 term is not a square)"
    elif config.train.huber_delta > 0:
        reason = "lm fits least squares: set train.huber_delta to 0 (Huber is not a square)"
    elif size > MAX_PARAMETERS:
        reason = (
            f"lm solves a P x P system per step: models up to {MAX_PARAMETERS:,} parameters "
            f"(this one has {size:,}); use lbfgs or adamw"
        )
    if reason:
        raise ConfigError("", "optim.optimizer", reason)


def _lbfgs(config: RunConfig, params: list[nn.Parameter]) -> torch.optim.LBFGS:
    """L-BFGS over every parameter as one group (it takes no more), named `kan`: its LR is
    `optim.lr x lr_mult.kan`. Tolerances of zero: a step always runs its `lbfgs_iters`
    iterations (a fit of a few hundred steps should not end silently at a float32 plateau);
    weight decay does not apply."""
    return torch.optim.LBFGS(
        [{"params": params, "name": "kan"}],
        lr=config.optim.lr,
        max_iter=config.optim.lbfgs_iters,
        history_size=LBFGS_HISTORY,
        line_search_fn="strong_wolfe",
        tolerance_grad=0.0,
        tolerance_change=0.0,
    )


def forget_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop the per-parameter state (moments, L-BFGS's history) of parameters whose values were
    replaced, or whose shapes changed (grid extension): it described other coefficients.
    L-BFGS also caches the parameters' total size."""
    optimizer.state.clear()
    if isinstance(optimizer, torch.optim.LBFGS):
        optimizer._numel_cache = None  # type: ignore[attr-defined]


def portable_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`state_dict()` with plain-float LRs, so a checkpoint from a CUDA-graph run loads anywhere."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:  # fresh dicts: changing them leaves the optimizer alone
        group["lr"] = float(group["lr"])
    return state


def load_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`load_state_dict` that keeps this optimizer's `RUNTIME_FLAGS`: a state saved by a fused,
    capturable CUDA optimizer resumes on the CPU and vice versa (torch would take the saved flags,
    and with them the device the `step` counters must live on). LRs come in as floats, so
    `Schedule.apply` makes fresh device tensors of them where a CUDA graph needs those."""
    groups = [
        {
            **saved,
            "lr": float(saved["lr"]),
            **{key: ours[key] for key in RUNTIME_FLAGS if key in ours},
        }
        for saved, ours in zip(state["param_groups"], optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict({**state, "param_groups": groups})


class Schedule:
    """Per-step LR setter (LambdaLR-like) over the optimizer's named param groups.

    `scale` multiplies every LR (the trainer halves it after restoring from a divergence). The state
    is two numbers, so it round-trips through `torch.load(weights_only=True)`. With `lr_device`
    the LRs are 0-dim tensors there, filled in place, so a captured CUDA graph reads each new
    value (a float would be baked into the graph).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: RunConfig,
        steps_per_epoch: int,
        lr_device: torch.device | None = None,
    ):
        self.optimizer = optimizer
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.lr_device = lr_device
        self.step = 0
        self.scale = 1.0
        self.apply(0)

    def lrs(self) -> dict[str, float]:
        """LR per group (all three groups, present in the model or not) at the current step."""
        train, schedule = self.config.train, self.config.schedule
        factor = lr_factor(schedule, train.epochs, self.steps_per_epoch, self.step)
        return group_lrs(self.config, factor * self.scale)

    def apply(self, step: int) -> dict[str, float]:
        """Set every param group's LR for 0-based global `step`; returns the LRs."""
        self.step = step
        lrs = self.lrs()
        for group in self.optimizer.param_groups:
            value, current = lrs[group["name"]], group["lr"]
            if self.lr_device is None:
                group["lr"] = value
            elif isinstance(current, Tensor):  # one of ours: states are loaded with float LRs
                current.fill_(value)  # the same tensor: a captured graph reads the new value
            else:  # first call, or after loading a state
                group["lr"] = torch.tensor(value, device=self.lr_device)
        return lrs

    def state_dict(self) -> dict[str, float | int]:
        return {"step": self.step, "scale": self.scale}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.scale = float(state["scale"])
        self.apply(int(state["step"]))

"""Run set-up that training, the LR finder, the memory estimate, `compare` and `eval` share.

Why its own module: each of those tools needs the same few steps (a device from `train.device`,
seeded generators, the autocast dtype, the model on its device, a split's loss and accuracy, a
run's checkpoint checked against its config), and none of them should have to import the
training loop to get them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kan_engine import checkpoint as ckpt
from kan_engine import data as data_mod
from kan_engine import distributed, models, resume_plan, runs
from kan_engine.config import RunConfig
from kan_engine.errors import ConfigError, RunDirError

EVAL_BATCH = 512  # evaluation batch size floor: no gradients, so larger batches are cheap


def pick_device(name: str) -> torch.device:
    """`auto` is CUDA, then MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError("", "train.device", f"{name!r}: this machine has {count} CUDA GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("", "train.device", "'mps': not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def precision(config: RunConfig, device: torch.device) -> tuple[torch.dtype | None, bool, str]:
    """(autocast dtype or None, use a GradScaler, notice or "") for `train.mixed_precision`."""
    mode = config.train.mixed_precision
    exact = {"optim.optimizer=lbfgs": config.optim.optimizer == "lbfgs",  # a line search
             "optim.optimizer=lm": config.optim.optimizer == "lm",  # a P x P solve
             "train.dtype=float64": config.train.dtype == "float64"}  # fmt: skip
    reasons = [name for name, holds in exact.items() if holds]
    if reasons:  # autocast would round away the digits these are chosen for
        lower = mode in ("bf16", "fp16")
        message = f"train.mixed_precision={mode}: off with {reasons[0]}" if lower else ""
        return None, False, message
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            return None, False, f"train.mixed_precision={mode} needs CUDA: fp32 on {device}"
        return None, False, ""
    if mode == "off":
        return None, False, ""
    if mode == "fp16":
        return torch.float16, True, ""
    return torch.bfloat16, False, ""


def model_args(config: RunConfig, input_shape: tuple[int, ...], outputs: int) -> dict[str, Any]:
    """What a run's model is built from (`models.build_from`): the model's name, the input
    shape, the outputs, the `[kan]` build options (and `model.width`) and the weights' dtype,
    as plain data. Training, inference and the build arguments written beside a safetensors
    export all take it from here."""
    options = config.kan.build_options()
    if config.model.width:
        options["width"] = list(config.model.width)
    return {
        "name": config.model.name,
        "input_shape": list(input_shape),
        "num_classes": outputs,
        "options": options,
        "dtype": config.train.dtype,
    }


def build_model(config: RunConfig, bundle: data_mod.DataBundle, device: torch.device) -> nn.Module:
    model = build_for(config, bundle.input_shape, bundle.num_classes, device)
    bundle.cast(models.DTYPES[config.train.dtype])  # the batches follow the model's dtype
    return model


def load_initial(model: nn.Module, init_from: str, run_dir: Path, device: torch.device) -> None:
    """`model.init_from`'s weights into the model built from the config: a checkpoint's
    evaluated weights (the weight average where it kept one), or a file of model weights
    (`{"model": state dict}`, what a pruned run keeps in `runs.INIT`); a relative path is read
    from the run folder. A file that is missing, damaged or does not fit is one RunDirError."""
    path = Path(run_dir) / Path(init_from).expanduser()
    try:
        state = ckpt.load(path, device, keys=("model",))
    except RunDirError as exc:  # the path came from the config: say which key named it
        raise RunDirError(f"model.init_from: {exc}") from None
    # the run's own config, not its config.toml: a new run that fails here is deleted
    with ckpt.fitting(path, "this run's model (model.init_from)"):
        model.load_state_dict(ckpt.evaluated_weights(state))


def build_for(
    config: RunConfig, input_shape: tuple[int, ...], outputs: int, device: torch.device
) -> nn.Module:
    """The run's model for inputs of `input_shape`, on `device` (without its data at hand)."""
    model = models.build_from(model_args(config, input_shape, outputs)).to(device)
    if device.type == "cuda" and len(input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    return model


def eval_split(
    model: nn.Module,
    bundle: data_mod.DataBundle,
    split: str,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    dist: distributed.Dist = distributed.SINGLE,
) -> dict[str, float]:
    """A split's metrics (`Task.metrics`: loss and accuracy, or loss, RMSE, MAE and R²); sums
    stay on the device, one read-back at the end. Under torchrun each rank evaluates its share
    and the sums are all-reduced: every rank gets the same numbers, those of the whole split."""
    device, task = bundle.device, bundle.task
    was_training = model.training
    model.eval()
    sums = torch.zeros(task.sums_size(), device=device)
    eval_batch = max(batch_size, EVAL_BATCH)
    with torch.no_grad():
        for x, y in bundle.batches(
            split, eval_batch, shuffle=False, rank=dist.rank, world=dist.world
        ):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)  # (N, classes or targets)
            sums += task.eval_sums(out, y)
    model.train(was_training)
    totals = dist.all_sum_(sums).tolist()
    return task.metrics(totals, bundle.sizes[split], bundle.total_squares.get(split, []))


@dataclass
class RunCheckpoint:
    """A run's checkpoint, read and checked against its config.toml, for the tools that use
    the trained model (eval, predict, export)."""

    run_dir: Path
    which: str  # "best" or "last"
    path: Path
    config: RunConfig
    state: dict[str, Any]
    epoch: int  # epochs trained when it was written
    device: torch.device

    def load_into(self, model: nn.Module) -> None:
        """The weights validation judged (the weight average, where kept) into `model`."""
        with ckpt.fitting(self.path, str(self.run_dir / runs.CONFIG)):
            model.load_state_dict(ckpt.evaluated_weights(self.state))


def open_checkpoint(run_dir: Path, which: str, device: torch.device | None = None) -> RunCheckpoint:
    """`which` checkpoint of the run, loaded on `device` (default: the run's `train.device`);
    RunDirError for a missing, damaged or foreign file, or one config.toml disagrees with."""
    run_dir = Path(run_dir)
    config = runs.read_config(run_dir)
    device = device or pick_device(config.train.device)
    path = runs.checkpoint_path(run_dir, which)
    state = ckpt.load(path, device, keys=("model", "counters"))
    counters = state["counters"]
    epoch = counters.get("epochs_run") if isinstance(counters, dict) else None
    if not isinstance(epoch, int):
        raise RunDirError(f"{path}: not a kan-tui checkpoint (counters)")
    resume_plan.check_matches(config, state, path, run_dir)
    return RunCheckpoint(run_dir, which, path, config, state, epoch, device)


def evaluate(run_dir: Path, split: str = "test", checkpoint: str = "best") -> dict[str, Any]:
    """A run's checkpoint judged on a split: {"task", "loss", "acc" (or "rmse", "mae", "r2"),
    "n", ...}."""
    opened = open_checkpoint(run_dir, checkpoint)
    config, device = opened.config, opened.device
    bundle = data_mod.load(config.data, device=device, seed=config.train.seed)
    model = build_model(config, bundle, device)
    opened.load_into(model)
    amp_dtype = precision(config, device)[0]
    scores = eval_split(model, bundle, split, config.train.batch_size, amp_dtype)
    return {
        "split": split,
        "checkpoint": checkpoint,
        "epoch": opened.epoch,
        "task": bundle.task.kind,
        **scores,
        "n": bundle.sizes[split],
    }

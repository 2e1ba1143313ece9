"""Parameter count and training-memory estimate, and the `batch_size = "auto"` pick.

What a training step holds at its peak (steady state, after the first step created the optimizer
state): the parameters, the optimizer state, the data set (kept whole on the device, see
`data.py`), and then the larger of two phases that never overlap:

* forward + backward: activations saved for backward, transients (the KAN basis is rebuilt in
  backward, several times the layer input), activation gradients and the parameter gradients
  being written. This grows linearly with the batch: `fixed + per_sample * batch`.
* the optimizer step (and clipping): the gradients plus the optimizer's temporaries (torch's
  foreach Adam on the CPU allocates several parameter-sized lists); independent of the batch.

Both phases are *measured*, not modelled: one real training step on a tiny batch (two sizes, to
get the slope and the intercept) under `memory_peak.TensorMemoryPeak`, which counts every storage
alive at once, on the CPU in float32. Saved-tensor hooks alone would miss the transients, which
dominate a KAN layer (its fast path saves only its input but rebuilds a (N, G+3k, in) basis).
On CUDA the estimate is an upper bound for the activations (bf16 autocast halves many of them, the
fused optimizer needs fewer temporaries) and leaves out the CUDA context and allocator slack,
which the 20 % margin of `auto_batch_size` is there for. Evaluation runs without gradients and
needs much less than a training step, so it is not part of the estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kan_engine import least_squares, spline_gather
from kan_engine.config import RunConfig, limits
from kan_engine.errors import ConfigError
from kan_engine.levenberg_marquardt import LevenbergMarquardt
from kan_engine.memory_peak import TensorMemoryPeak

__all__ = [
    "MemoryEstimate",
    "auto_batch_size",
    "available_bytes",
    "estimate",
    "format_bytes",
    "measure",
]

MARGIN = 0.2  # share of the available memory kept free by `auto_batch_size`
PROBE_BATCHES = (4, 16)  # the two tiny batches the per-sample slope is measured on
# the schema's bounds of train.batch_size (at least 2: BatchNorm cannot train on one sample)
MIN_BATCH, MAX_BATCH = limits("train.batch_size")["ge"], limits("train.batch_size")["le"]
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step, split by what holds them; `total(batch)` is the peak.

    `backward` holds the forward + backward phase as lines (fixed bytes, bytes per sample): the
    live bytes after each op of a step are linear in the batch, so the phase's peak at any batch
    is the largest of those lines (only the lines that can be the largest are kept).
    """

    params: int  # trainable parameter count
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int  # optimizer state (Adam moments, SGD momentum)
    step_bytes: int  # temporaries of clipping and the optimizer step
    backward: tuple[tuple[float, float], ...]  # (fixed, per sample) of forward + backward
    data_bytes: int  # the data set held on the device
    train_size: int | None = None  # samples of the training split, when measured for a config

    @property
    def per_sample_bytes(self) -> float:
        """Bytes per sample of large batches (activations, their gradients, the input)."""
        return max(slope for _, slope in self.backward)

    def total(self, batch_size: int) -> int:
        backward = max(fixed + slope * batch_size for fixed, slope in self.backward)
        step = self.grad_bytes + self.step_bytes
        resident = self.param_bytes + self.optimizer_bytes + self.data_bytes
        return int(resident + max(backward, step))

    def describe(self, batch_size: int, device: str = "") -> str:
        """One line for the setup screen and the CLI."""
        where = f" on {device}" if device else ""
        return (
            f"{_count(self.params)} params · training ~{format_bytes(self.total(batch_size))} "
            f"at batch {batch_size}{where}"
        )


def _upper_lines(
    first: list[int], second: list[int], probes: tuple[int, int], extra: float
) -> tuple[tuple[float, float], ...]:
    """Per-op lines through the live bytes at the two probe batches, without dominated lines.

    A step's ops are the same at every batch size (chunked layers aside, where more chunks only
    repeat a transient: the lines then overestimate, never underestimate); `extra` bytes per
    sample (the input batch) are added to every line.
    """
    if len(first) != len(second):  # a model whose ops depend on the batch: the peaks' line
        first, second = [max(first)], [max(second)]
    span = probes[1] - probes[0]
    lines = []
    for low, high in zip(first, second, strict=True):
        slope = max(high - low, 0) / span
        lines.append((low - slope * probes[0], slope + extra))
    kept: list[tuple[float, float]] = []
    for fixed, slope in sorted(lines, key=lambda line: (-line[1], -line[0])):
        if not kept or fixed > kept[-1][0]:
            kept.append((fixed, slope))
    return tuple(kept)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GB" else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} k" if n >= 1e3 else str(n)


def _tensor_bytes(tensors: object) -> int:
    """Bytes of the distinct storages of the tensors in a (nested) optimizer state."""
    seen: dict[int, int] = {}

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(tensors)
    return sum(seen.values())


def measure(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    *,
    clip_grad_norm: float = 0.0,
    data_bytes: int = 0,
    probes: tuple[int, int] = PROBE_BATCHES,
    dense_basis: bool = False,
) -> MemoryEstimate:
    """Measure `model`'s training step on two tiny random batches (see the module docstring).

    `dense_basis`: measure the CPU's dense route, whose padded basis bounds the GPU's fused
    operand from above, instead of the gathered route a CPU run takes (which builds no basis).

    Trains the model for three tiny steps: pass a model that may change (`estimate` builds its
    own). The model's device is used for the batches; the meter works on any device.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model)
    model.train()

    dtype = params[0].dtype  # float64 for an exact function fit

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, *input_shape, device=device, dtype=dtype)  # (n, *input_shape)
        return x, torch.randint(0, num_classes, (n,), device=device)

    def forward_backward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # a loss of the outputs alone: what backward keeps alive is the model's, whatever the
        # task's loss (cross-entropy, or a regression's MSE) on top of it
        del y
        loss = model(x).float().square().mean()
        loss.backward()
        return loss

    def step() -> None:
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        if isinstance(optimizer, torch.optim.LBFGS):  # its step re-evaluates a batch
            probe = batch(probes[0])

            def closure() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                return forward_backward(*probe)

            optimizer.step(closure)
            return
        if isinstance(optimizer, LevenbergMarquardt):  # its step builds a P x P system
            x, _ = batch(probes[0])
            with torch.no_grad():
                target = model(x).float() + 1  # any target of the outputs' shape
            optimizer.state.clear()  # never converged: the step measured solves its system
            group = optimizer.param_groups[0]["params"]
            optimizer.step(
                lambda: least_squares.normal_equations(model, group, x, target.to(x.dtype)),
                lambda: model(x).square().mean(),
            )
            return
        optimizer.step()

    forward_backward(*batch(probes[0]))  # a first step creates the optimizer state
    step()
    optimizer.zero_grad(set_to_none=True)
    timelines = []
    for n in probes:
        x, y = batch(n)
        dense = spline_gather.dense_only() if dense_basis else contextlib.nullcontext()
        with TensorMemoryPeak(timeline=True) as meter, dense:
            forward_backward(x, y)
        timelines.append(meter.timeline)
        per_sample_input = (x.nbytes + y.nbytes) / n
        if n != probes[-1]:
            optimizer.zero_grad(set_to_none=True)
    with TensorMemoryPeak() as meter:
        step()
    optimizer.zero_grad(set_to_none=True)
    return MemoryEstimate(
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.nbytes for p in model.parameters()),
        grad_bytes=sum(p.nbytes for p in params),
        optimizer_bytes=_tensor_bytes(optimizer.state_dict()["state"]),
        step_bytes=meter.peak,
        backward=_upper_lines(*timelines, probes, per_sample_input),
        data_bytes=data_bytes,
    )


def _cache_key(config: RunConfig) -> str:
    """The config fields a measurement depends on (not the batch size: `total` scales it)."""
    return repr(
        (
            config.model,
            config.data,
            config.kan,
            config.optim.optimizer,
            config.optim.momentum > 0,
            config.train.clip_grad_norm > 0,
            config.train.seed,
            _runs_on_gpu(config),
        )
    )


_CACHE: dict[str, MemoryEstimate] = {}


def estimate(config: RunConfig, notice: Callable[[str], None] | None = None) -> MemoryEstimate:
    """Training memory of `config` (its model, data set and optimizer), measured on the CPU.

    Loads the data set (for its shape and size; on the CPU) and builds the model there; seeded,
    so the same config gives the same figures, and remembered per process, so a form that only
    changes the batch size or the LR asks again for free. Raises what `data.load` raises for
    missing data. `notice` hears of a wait before it starts (the CPU extension's first build,
    which a CPU run's measurement takes: `spline_gather.prepare`).
    """
    key = _cache_key(config)
    if key not in _CACHE:
        _CACHE[key] = _measure_config(config, notice)
    return _CACHE[key]


def _measure_config(
    config: RunConfig, notice: Callable[[str], None] | None = None
) -> MemoryEstimate:
    from kan_engine import data as data_mod
    from kan_engine import models, optim
    from kan_engine.run_setup import build_model

    cpu = torch.device("cpu")
    bundle = data_mod.load(config.data, device=cpu, seed=config.train.seed)
    item = 1 if len(bundle.input_shape) == 3 else 4  # images stay uint8, tables float32
    per_row = math.prod(bundle.input_shape) * item + 8  # + the int64 label
    data_bytes = sum(bundle.sizes.values()) * per_row
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        model = build_model(config, bundle, cpu)
        gpu = _runs_on_gpu(config)
        if notice is not None and not gpu:  # a GPU run's estimate takes the dense route
            spline_gather.prepare(model, cpu, notice)
        est = measure(
            model,
            bundle.input_shape,
            bundle.num_classes,
            lambda m: optim.build_optimizer(config, models.param_groups(m), cpu),
            clip_grad_norm=config.train.clip_grad_norm,
            data_bytes=data_bytes,
            dense_basis=gpu,
        )
    return dataclasses.replace(est, train_size=bundle.sizes["train"])


def _runs_on_gpu(config: RunConfig) -> bool:
    """Whether the run will take the GPU's layer route (its device, "auto" included)."""
    return config.train.device != "cpu" and torch.cuda.is_available()


def available_bytes(device: torch.device) -> int:
    """Memory a run on `device` may use: free GPU memory, or the host's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_batch_size(
    est: MemoryEstimate, available: int, *, limit: int | None = None, margin: float = MARGIN
) -> int:
    """The largest power of two whose step fits `available` bytes less `margin`, at most `limit`
    (default: the training split of `est`; a larger batch only repeats the epoch's one step)."""
    budget = available * (1 - margin)
    if est.total(MIN_BATCH) > budget:
        raise ConfigError(
            "--batch-size auto",
            "train.batch_size",
            f"even batch {MIN_BATCH} needs ~{format_bytes(est.total(MIN_BATCH))}, more than "
            f"{format_bytes(budget)} ({1 - margin:.0%} of {format_bytes(available)} available)",
        )
    limit = min(limit or est.train_size or MAX_BATCH, MAX_BATCH)
    batch = MIN_BATCH
    while batch * 2 <= limit and est.total(batch * 2) <= budget:
        batch *= 2
    return batch

"""Many processes, one run: what the trainer needs from a torchrun launch (PyTorch DDP).

`torchrun --nproc-per-node N -m kan_tui run --headless ...` starts N copies of the command with
RANK, WORLD_SIZE and LOCAL_RANK in their environment. `launch` joins them into one process group
(NCCL on CUDA, gloo on the CPU), each on its own device (`cuda:LOCAL_RANK`); the trainer asks
`current()` which rank it is and wraps the model in DistributedDataParallel.

The rules that keep N processes one run (the trainer follows them):

* `train.batch_size` is the GLOBAL batch. Every step, each rank takes its contiguous part of the
  same global batch of the same epoch permutation (a pure function of (seed, epoch), so resume
  still replays it), and DDP averages the gradients: a preset means the same on any number of
  processes and the learning rate needs no scaling. A batch that does not split evenly is refused.
* Every rank reaches every collective in the same order: decisions that end or change the loop
  (stop, skip a non-finite step, grid update) come from values all ranks share (an all-reduced flag,
  a seeded random stream, all-reduced metrics), never from one rank's local state.
* Rank 0 alone writes the run folder and reports; `on_main` hands its results (or its failure) to
  the others, so no rank waits forever on a rank 0 that raised.

`Dist()` (one process) makes every collective a no-op, so the trainer's code is the same either way.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kan_engine.errors import ConfigError, KanError

T = TypeVar("T")

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
QUIESCE_S = 60  # seconds a finished rank waits at most for the others before leaving the group


def launched() -> bool:
    """True in a process that torchrun (or any launcher setting its variables) started as one of
    several; a launch of one process trains as a plain single process."""
    return all(name in os.environ for name in ENV) and int(os.environ["WORLD_SIZE"]) > 1


def device_for(name: str, local_rank: int) -> torch.device:
    """The device of the process with `local_rank` for `train.device` = `name`.

    One GPU per process, chosen by LOCAL_RANK: so `cuda:N`, which pins every process to one GPU,
    is refused, and MPS has no multi-process backend.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name.startswith("cuda:"):
        raise ConfigError(
            "torchrun",
            "train.device",
            f"{name!r} puts every process on one GPU; under torchrun each process takes the GPU "
            "of its LOCAL_RANK: use cuda or auto",
        )
    if name == "mps":
        raise ConfigError("torchrun", "train.device", "'mps' has no multi-process backend: use cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise ConfigError(
            "torchrun",
            "train.device",
            f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank}, but this machine has {count}: "
            "start at most that many processes per node",
        )
    return torch.device("cuda", local_rank)


def per_rank_batch(batch_size: int, world: int) -> int:
    """Samples each rank takes of a global batch of `batch_size`; uneven splits are refused, so
    every rank's share (and the gradient average) weighs the same."""
    if batch_size % world:
        raise ConfigError(
            "torchrun",
            "train.batch_size",
            f"{batch_size} (the global batch) does not split evenly across {world} processes: "
            f"use a multiple of {world}",
        )
    if batch_size < 2 * world:  # the schema's batch >= 2 holds per process, not just in all
        raise ConfigError(
            "torchrun",
            "train.batch_size",
            f"{batch_size} (the global batch) leaves one sample per process: BatchNorm and the "
            f"grid update need two; use at least {2 * world}",
        )
    return batch_size // world


def batch_notice(batch_size: int, world: int) -> str:
    """The line that says how a global batch of `batch_size` splits (refused if it does not)."""
    per_rank = per_rank_batch(batch_size, world)
    return (
        f"torchrun: {world} processes; global batch {batch_size} = {per_rank} per process "
        "(same LR as one process)"
    )


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; the default is a single process (collectives no-ops)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _device(self) -> torch.device:
        """Where collective tensors live: NCCL moves CUDA tensors only, gloo CPU ones."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_sum(self, values: list[float]) -> list[float]:
        """Host numbers summed over the ranks (float64; one small collective and read-back)."""
        if not self.enabled:
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return total.tolist()

    def all_sum_(self, tensor: Tensor) -> Tensor:
        """Sum a device tensor over the ranks in place (no read-back)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on some rank."""
        return self.all_sum([float(flag)])[0] > 0 if self.enabled else flag

    def all_true(self, ok: Tensor) -> Tensor:
        """A 0-dim bool tensor that is True on every rank only where it is True on all of them;
        stays on the device (no host sync), so a fused optimizer can still skip on the device."""
        if not self.enabled:
            return ok
        flag = ok.float()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return flag > 0

    def gather_rows(self, x: Tensor) -> Tensor:
        """Every rank's rows, in rank order: (n_rank, F) -> (sum of n_rank, F) on every rank.

        Ranks may hold different row counts (the last batch of an epoch): the counts are gathered
        first and the rows padded to the largest, as all_gather needs equal shapes.
        """
        if not self.enabled:
            return x
        count = torch.tensor([x.shape[0]], device=x.device)
        counts = [torch.empty_like(count) for _ in range(self.world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        padded = x.new_zeros(max(sizes), *x.shape[1:])  # (max n_rank, F)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    def on_main(self, fn: Callable[[], T]) -> T:
        """`fn()` runs on rank 0; every rank returns its result (picklable) or raises its failure.

        A rank 0 that fails would otherwise leave the others waiting in the next collective.
        """
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:
                box[0] = ("error", f"{type(exc).__name__}: {exc}")
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise KanError(f"rank 0 failed: {value}")
        return value

    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's module, in place."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_batchnorm_stats(self, module: nn.Module) -> None:
        """Average BatchNorm running statistics over the ranks (each rank tracked its own shard).

        DDP runs without the per-forward buffer broadcast (`wrap`), so these are the only buffers
        that drift apart; averaging them at epoch end makes every rank evaluate and checkpoint the
        same model. Other buffers (the KAN grids) are already identical and are left alone.
        """
        if not self.enabled:
            return
        stats = [
            buf
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for buf in (m.running_mean, m.running_var)
        ]
        for buf in stats:
            dist.all_reduce(buf)
            buf.div_(self.world)


SINGLE = Dist()  # one process: every collective is a no-op


def wrap(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP without the per-forward buffer broadcast.

    The KAN grids are buffers and identical on every rank already (same updates on the same
    gathered samples); BatchNorm running statistics are averaged at epoch ends
    (`Dist.average_batchnorm_stats`). Broadcasting rank 0's buffers into every forward would only
    cost traffic and replace the other ranks' BatchNorm statistics with rank 0's. Torch 2.14 renamed
    the flag (`forward_sync_buffers`; the buffers are still made equal once, at wrap time).
    """
    device_ids = [device] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def current() -> Dist:
    """This process's Dist: from the initialised process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    rank = dist.get_rank()
    return Dist(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


@contextlib.contextmanager
def launch(device_name: str) -> Iterator[Dist]:
    """Join the torchrun process group for the block (a single-process Dist when not launched).

    NCCL when this process trains on CUDA, gloo on the CPU; the CUDA device is made current first,
    so NCCL and `torch.cuda` calls without an index use this process's GPU.
    """
    if not launched():
        yield Dist()
        return
    device = device_for(device_name, int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield current()
        _quiesce(device)
    finally:
        dist.destroy_process_group()


def _quiesce(device: torch.device) -> None:
    """Every rank reaches the group's end before any destroys it: a gloo rank whose peer had
    already closed its connections is the likely cause of a rank aborting at exit ("terminate
    called without an active exception": twice in about a dozen two-rank launches on the 2-core
    box, none in the 7 launches since this barrier, too few to call it proven). Bounded on gloo,
    so a rank that ended another way (an error its peer did not have) delays the exit, never
    hangs it."""
    if device.type == "cuda":
        dist.barrier()
        return
    with contextlib.suppress(RuntimeError):  # the peer is gone already: nothing to wait for
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=QUIESCE_S))

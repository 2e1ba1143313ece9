"""`batch_size = "auto"`: the config with the largest batch whose training step fits the device.

The rule itself (a power of two, 20 % of the memory kept free, at most the training split) is
`memory.auto_batch_size`; this module is the run set-up around it: the device the run will train
on, the memory estimate of that very config, and the refusal under torchrun, where each process
would measure its own free memory and could pick another batch than its neighbours.
"""

from __future__ import annotations

from kan_engine import distributed, memory
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.run_setup import pick_device

SOURCE = "--batch-size auto"  # what errors about the picked batch name as their source


def pick(config: RunConfig) -> tuple[RunConfig, str]:
    """The config with `train.batch_size` picked, and one line saying what was picked and why
    (for the caller to show: `batch size auto: 512 (...; 10.2 GB available, 20% kept free)`)."""
    if distributed.launched():
        reason = "is picked per process and could differ between ranks: give a number"
        raise ConfigError("--batch-size", "auto", reason)
    device = pick_device(config.train.device)
    est = memory.estimate(config)
    available = memory.available_bytes(device)
    batch = memory.auto_batch_size(est, available)
    note = (
        f"batch size auto: {batch} ({est.describe(batch, str(device))}; "
        f"{memory.format_bytes(available)} available, {memory.MARGIN:.0%} kept free)"
    )
    return apply_overrides(config, {"train.batch_size": batch}, SOURCE), note

"""The training-memory estimate against a measured training step, and the auto batch pick.

How "measured" is measured: `TensorMemoryPeak` (memory_peak.py) counts every storage alive at once
during a whole steady-state training step (forward, backward, clipping, AdamW step) at a large
batch, plus what existed before the step and lives through it (parameters, optimizer state, the
batch). The estimate instead extrapolates from two tiny batches and composes the phases, so the
test checks the linear model, the phase split and the optimizer accounting, not the meter.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kan_engine import models, optim
from kan_engine.config import RunConfig
from kan_engine.errors import ConfigError
from kan_engine.memory import (
    MemoryEstimate,
    auto_batch_size,
    available_bytes,
    estimate,
    format_bytes,
    measure,
)
from kan_engine.memory_peak import TensorMemoryPeak


def measured_peak(
    model: nn.Module, make_opt: Callable[[nn.Module], torch.optim.Optimizer], shape, batch: int
) -> int:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_opt(model)

    def step(n: int) -> int:
        x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
        with TensorMemoryPeak() as meter:
            F.cross_entropy(model(x), y).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        resident = sum(p.nbytes for p in model.parameters()) + x.nbytes + y.nbytes
        state = opt.state_dict()["state"]
        resident += sum(v.nbytes for s in state.values() for v in s.values() if v.dim() > 0)
        return meter.peak + resident

    step(4)  # the first step creates the optimizer state: measure the steady state
    return step(batch)


@pytest.mark.parametrize(
    ("name", "shape"), [("kan", (1, 8, 8)), ("fast_exact_kan", (1, 28, 28)), ("cnn", (1, 28, 28))]
)
@pytest.mark.parametrize("batch", [64, 512])
def test_estimate_within_30_percent_of_the_measured_peak(name: str, shape, batch: int) -> None:
    config = RunConfig()

    def make_opt(model: nn.Module) -> torch.optim.Optimizer:
        return optim.build_optimizer(config, models.param_groups(model), torch.device("cpu"))

    torch.manual_seed(0)
    est = measure(models.build(name, shape, 10), shape, 10, make_opt, clip_grad_norm=1.0)
    torch.manual_seed(0)
    actual = measured_peak(models.build(name, shape, 10), make_opt, shape, batch)
    assert 0.7 * actual <= est.total(batch) <= 1.3 * actual, (est.total(batch), actual)


def test_estimate_of_a_config(tiny_config: Callable[..., RunConfig]) -> None:
    config = tiny_config()
    est = estimate(config)
    model = models.build("kan", (1, 8, 8), 10)
    assert est.params == models.count_params(model)["total"]
    assert est.param_bytes == est.grad_bytes == 4 * est.params
    assert est.optimizer_bytes >= 2 * est.param_bytes  # AdamW: two moments per parameter
    assert est.data_bytes == 1797 * (64 + 8)  # digits: 8x8 uint8 + int64 label, all splits
    assert est.total(1024) > est.total(64) > est.param_bytes + est.optimizer_bytes
    assert "params" in est.describe(64, "cpu") and "batch 64 on cpu" in est.describe(64, "cpu")


def synthetic(per_sample: float, fixed: float = 0.0) -> MemoryEstimate:
    return MemoryEstimate(
        params=1000,
        param_bytes=4000,
        grad_bytes=4000,
        optimizer_bytes=8000,
        step_bytes=8000,
        backward=((fixed, per_sample),),
        data_bytes=0,
    )


def test_auto_batch_is_the_largest_power_of_two_that_fits_with_margin() -> None:
    est = synthetic(per_sample=1000.0)
    available = 1_000_000
    batch = auto_batch_size(est, available)
    assert batch == 512  # 12 kB + 512 kB fits in 800 kB; 1024 would need 1.04 MB
    assert est.total(batch) <= 0.8 * available < est.total(batch * 2)
    assert auto_batch_size(est, available, limit=300) == 256  # never more than the data
    assert auto_batch_size(est, available, margin=0.0) == 512


def test_auto_batch_refuses_when_nothing_fits() -> None:
    with pytest.raises(ConfigError, match="even batch 2 needs"):
        auto_batch_size(synthetic(per_sample=1e6), 1_000_000)


def test_phases_do_not_add_up() -> None:
    """Small batches peak in the optimizer step, large ones in backward: the larger counts."""
    est = synthetic(per_sample=10.0)
    assert est.total(2) == 4000 + 8000 + 4000 + 8000  # resident + gradients + step temporaries
    assert est.total(10_000) == 4000 + 8000 + 100_000


def test_available_memory_and_formatting() -> None:
    assert available_bytes(torch.device("cpu")) > 2**20
    assert format_bytes(1.5 * 2**30) == "1.50 GB"
    assert format_bytes(300 * 2**20) == "300 MB"


def test_batch_size_auto_on_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from kan_tui.cli import app

    monkeypatch.setenv("KAN_TUI_CONFIG", str(tmp_path / "config"))
    args = ["run", "--print-config", "--dataset", "digits", "--model", "kan", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "auto"])
    assert result.exit_code == 0, result.output
    batch = tomllib.loads(result.stdout)["train"]["batch_size"]
    assert batch & (batch - 1) == 0  # a power of two
    assert batch <= 1437  # never more than the training split (digits: 1437 after the test split)
    assert f"batch size auto: {batch}" in result.stderr


@pytest.mark.parametrize("optimizer", ["lbfgs", "lm"])
def test_estimate_of_a_float64_full_batch_regression(optimizer: str) -> None:
    from kan_engine import presets_io
    from kan_engine.config import apply_overrides

    config, _ = presets_io.resolve("function")  # float64, a regression of 2 inputs
    overrides = {"data.function_train": 200, "data.function_test": 50, "optim.optimizer": optimizer}
    est = estimate(apply_overrides(config, overrides))
    assert est.params == 21  # [2, 1, 1] at grid 3: 3 edges x (3 + 3 + 1)
    assert est.param_bytes == 8 * est.params  # float64
    # L-BFGS keeps its history; Levenberg-Marquardt keeps two numbers but solves a P x P system
    assert est.optimizer_bytes > 0 if optimizer == "lbfgs" else est.step_bytes >= 8 * 21 * 21
    assert est.total(512) > est.total(8) > 0

"""Regression and function fitting (issue 18): the task's metrics, grid extension, repeated
epochs, L-BFGS and float64, and resuming a run across its grid stages (CPU, small function fits
from the `function` preset: full batch, a few steps an epoch)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Recorder

from kan_engine import data as data_mod
from kan_engine import presets_io, runs
from kan_engine.config import DataSection, RunConfig, apply_overrides
from kan_engine.datasets import Raw
from kan_engine.errors import ConfigError
from kan_engine.events import CheckpointWritten, EpochEnd, Event, StepMetrics
from kan_engine.kan import KANLinear
from kan_engine.task import CLASSIFICATION, Task
from kan_engine.trainer import Trainer

# The function preset made small: a [2, 1, 1] KAN on kan_exp_sin2 (180 train / 20 val / 200
# test), full batch, L-BFGS of 3 iterations a step (the preset's Levenberg-Marquardt has tests
# of its own, test_levenberg_marquardt.py), 4 steps an epoch, grid updates at the stage's steps
# 0 and 2; no grid schedule unless a test sets one.
FUNCTION: dict[str, Any] = {
    "optim.optimizer": "lbfgs",
    "data.function_train": 200,
    "data.function_test": 200,
    "data.test_every_epoch": False,
    "optim.lbfgs_iters": 3,
    "train.epochs": 3,
    "train.steps_per_epoch": 4,
    "train.log_every": 1,
    "kan.grid_schedule": [],
    "kan.grid_stage_epochs": 0,
    "kan.grid_size": 5,
    "kan.grid_update_every": 2,
    "kan.grid_update_until": 4,
}


def function_config(**overrides: Any) -> RunConfig:
    preset = presets_io.resolve("function")[0]
    return apply_overrides(preset, {**FUNCTION, **overrides}, source="test")


def epoch_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [row for row in runs.read_metrics(run_dir) if row["event"] == "epoch"]


TIMING = {"seconds", "samples_per_s", "train_seconds"}


def same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Epoch rows equal but for what the clock measured."""
    assert [row["epoch"] for row in got] == [row["epoch"] for row in expected]
    for a, b in zip(got, expected, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == {
            k: v for k, v in b.items() if k not in TIMING
        }, a["epoch"]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].shape == wb[key].shape, key
        assert torch.equal(wa[key], wb[key]), key


# --- 1. the task's metrics -----------------------------------------------------------------------


def regression_bundle(outputs: int) -> tuple[data_mod.DataBundle, np.ndarray]:
    """A bundle whose targets are far from standard (means 100 and -3, stds 25 and 0.01), and
    its test targets in their own units (float64)."""
    rng = np.random.default_rng(3)
    scale, shift = np.array([25.0, 0.01])[:outputs], np.array([100.0, -3.0])[:outputs]
    x_train, x_test = rng.normal(size=(120, 2)), rng.normal(size=(50, 2))
    y_train = shift + scale * rng.normal(size=(120, outputs))
    y_test = shift + scale * rng.normal(size=(50, outputs))
    raw = Raw(
        x_train.astype(np.float32),
        y_train.astype(np.float32),
        x_test.astype(np.float32),
        y_test.astype(np.float32),
        class_names=["a", "b"][:outputs],
        source="test",
        task="regression",
    )
    bundle = data_mod.load(DataSection(), device=torch.device("cpu"), seed=0, raw=raw)
    return bundle, y_test.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("outputs", [1, 2])
def test_regression_metrics_are_rmse_mae_and_r2_in_target_units(outputs: int) -> None:
    bundle, truth = regression_bundle(outputs)
    task = bundle.task
    assert task.regression and task.target_std is not None
    std = task.target_std.double().numpy()
    mean = bundle.target_mean.double().numpy()
    assert np.allclose(mean, bundle.stored("train")[1].double().numpy().mean(0) * std + mean)
    # predictions in target units: the truth plus errors of each output's own scale
    rng = np.random.default_rng(4)
    prediction = truth + std * rng.normal(0.3, 0.5, truth.shape)
    out = torch.from_numpy((prediction - mean) / std).float()  # what the model would output
    y = bundle.stored("test")[1]
    sums = sum(task.eval_sums(o, t) for o, t in zip(out.split(16), y.split(16), strict=True))
    got = task.metrics(sums.tolist(), len(y), bundle.total_squares["test"])

    error = prediction - truth
    r2 = 1 - (error**2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    expected = {
        "rmse": math.sqrt((error**2).mean()),
        "mae": np.abs(error).mean(),
        "r2": r2.mean(),
        "loss": (((prediction - mean) / std - y.double().numpy()) ** 2).mean(),
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_regression_picks_the_lower_rmse_and_classification_the_higher_accuracy() -> None:
    regression = Task("regression", torch.ones(1))
    assert regression.selection == "rmse" and CLASSIFICATION.selection == "acc"
    assert regression.better(0.1, 0.2) and not regression.better(0.3, 0.2)
    assert not regression.better(0.2, 0.2)  # a tie keeps the earlier epoch
    assert regression.better(5.0, None) and not regression.better(math.nan, None)
    assert CLASSIFICATION.better(0.9, 0.8) and not CLASSIFICATION.better(0.7, 0.8)


def test_huber_minimises_the_huber_loss_and_reports_the_mean_squared_error() -> None:
    task = Task("regression", torch.ones(1))
    out, y = torch.tensor([[0.0], [0.1], [10.0]]), torch.zeros(3, 1)
    objective, reported = task.objective(out, y, huber_delta=0.5)
    assert objective.item() == pytest.approx(((0.005 + 0.0) / 1 + 0.5 * (10 - 0.25)) / 3)
    assert reported.item() == pytest.approx((0.01 + 100) / 3)  # the MSE, as val_loss is
    assert task.objective(out, y)[0].item() == reported.item()  # 0: plain MSE


def test_huber_fits_past_wild_targets_that_pull_the_mean_squared_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (400, 2))
    y = 2 * x[:, 0] - 3 * x[:, 1] + 1
    y[rng.random(400) < 0.05] += 50  # 5 % of the rows are wrong by 50
    table = tmp_path / "wild.csv"
    rows = [f"{a:.6f},{b:.6f},{c:.6f}" for (a, b), c in zip(x, y, strict=True)]
    table.write_text("x1,x2,y\n" + "\n".join(rows) + "\n")
    mae = {}
    for huber in (0.0, 0.1):
        config = function_config(
            **{"data.dataset": "csv", "data.data_dir": str(table), "data.task": "auto",
               "model.width": [2, 1], "train.epochs": 6, "optim.lbfgs_iters": 20,
               "train.huber_delta": huber}
        )  # fmt: skip
        mae[huber] = Trainer(config, sink=Recorder(), out_dir=tmp_path / "runs").run()["test_mae"]
    # The test split holds wild rows too, so neither MAE is small: a fit that ignores them is
    # off on those rows only, one pulled towards them is off on every row (measured: 5.06 with
    # Huber, 7.37 with the mean squared error).
    assert mae[0.1] < 0.8 * mae[0.0], mae


def test_huber_on_a_classification_is_refused_before_a_run_folder_exists(runs_dir: Path) -> None:
    config = function_config(
        **{"data.dataset": "digits", "data.task": "auto", "model.width": [64, 2, 10],
           "train.huber_delta": 0.5}
    )  # fmt: skip
    with pytest.raises(ConfigError) as error:
        Trainer(config, sink=Recorder(), out_dir=runs_dir).run()
    assert error.value.key == "train.huber_delta" and "classification" in error.value.reason
    assert not runs_dir.exists()  # no run folder left, nor the folder made for it


# --- 2. a regression trained on a known function -------------------------------------------------


def test_a_linear_function_is_fitted_and_best_epoch_follows_the_lowest_val_rmse(
    runs_dir: Path,
) -> None:
    config = function_config(
        **{"data.function": "2*x1 - 3*x2 + 1", "model.width": [2, 1], "train.epochs": 3}
    )
    trainer = Trainer(config, sink=Recorder(), out_dir=runs_dir)
    summary = trainer.run()
    saved = json.loads((trainer.run_dir / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["task"] == "regression"
    assert saved["test_r2"] > 0.99
    for key in ("test_rmse", "test_mae", "test_r2", "best_val_rmse"):
        assert isinstance(saved[key], float) and math.isfinite(saved[key]), key
    assert saved["test_acc"] is None and saved["best_val_acc"] is None
    rows = epoch_rows(trainer.run_dir)
    val = [row["metrics"]["val_rmse"] for row in rows]
    for n, row in enumerate(rows, 1):  # each row's best so far
        best = int(np.argmin(val[:n])) + 1
        assert row["best_epoch"] == best and row["best_val_rmse"] == min(val[:n])
        assert row["val_acc"] is None and row["train_acc"] is None
    assert saved["best_epoch"] == int(np.argmin(val)) + 1
    assert saved["best_val_rmse"] == min(val)
    assert summary["test_rmse"] == saved["test_rmse"]


# --- 3. grid refinement keeps the function, then fits better ------------------------------------


def _fit(layer: KANLinear, x: torch.Tensor, y: torch.Tensor, iterations: int) -> float:
    """Full-batch L-BFGS on the layer's parameters; the final training RMSE."""
    optimizer = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
        tolerance_grad=0.0, tolerance_change=0.0, history_size=50,
    )  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (layer(x) - y).square().mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (layer(x) - y).square().mean().sqrt().item()


def test_update_grid_to_finer_grids_keeps_the_function_then_fits_below_the_coarse_best() -> None:
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 400, dtype=torch.float64)[:, None]  # (N, 1)
    y = torch.exp(torch.sin(math.pi * x))
    layer = KANLinear(
        1, 1, grid_size=3, grid_range=(-1.0, 1.0), scale_base=0.0, init="noise",
        dtype=torch.float64,
    )  # fmt: skip
    coarse = _fit(layer, x, y, 300)  # to convergence: what 3 intervals can do
    assert coarse > 1e-3  # the coarse grid cannot fit it: refining has something to win
    assert _fit(layer, x, y, 100) == pytest.approx(coarse, rel=1e-3)
    params = {id(p) for p in layer.parameters()}
    for size in (5, 10, 20):
        with torch.no_grad():
            before = layer(x)
            layer.update_grid(x, grid_size=size)
            after = layer(x)
        assert layer.grid_size == size
        assert layer.grid.shape == (1, size + 2 * 3 + 1)
        assert layer.spline_weight.shape == (1, size + 3, 1)
        assert {id(p) for p in layer.parameters()} == params  # an optimizer still holds them
        relative = ((after - before).abs().max() / before.abs().max()).item()
        assert relative < 0.01, (size, relative)
    fine = _fit(layer, x, y, 30)
    assert fine < coarse / 10, (fine, coarse)


# --- 5. steps_per_epoch -------------------------------------------------------------------------

REPEATED = {
    "optim.optimizer": "adamw",
    "optim.lr": 0.01,
    "train.batch_size": 64,  # 180 training samples: 3 batches a pass (64, 64, 52)
    "train.steps_per_epoch": 7,  # two passes and a third's first batch
    "train.epochs": 2,
    "kan.grid_update_every": 3,
    "kan.grid_update_until": 0,
}


def test_batches_with_steps_repeat_passes_in_new_orders_and_skip_replays_the_rest() -> None:
    config = function_config(**REPEATED)
    bundle = data_mod.load(config.data, device=torch.device("cpu"), seed=0)
    full = list(bundle.batches("train", 64, shuffle=True, epoch=2, steps=7))
    assert [len(y) for _, y in full] == [64, 64, 52, 64, 64, 52, 64]
    first, second = (torch.cat([y for _, y in full[i : i + 3]]) for i in (0, 3))
    assert torch.equal(first.sort(0).values, second.sort(0).values)  # each pass: the split
    assert not torch.equal(first, second)  # in its own order
    one_pass = list(bundle.batches("train", 64, shuffle=True, epoch=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(one_pass, full, strict=False))
    for steps in (2, 7):  # less than a pass, and more
        whole = full[:steps]
        assert len(list(bundle.batches("train", 64, shuffle=True, epoch=2, steps=steps))) == steps
        for skip in range(steps + 1):
            resumed = bundle.batches("train", 64, shuffle=True, epoch=2, steps=steps, skip=skip)
            resumed = list(resumed)
            assert len(resumed) == steps - skip
            for (xa, ya), (xb, yb) in zip(resumed, whole[skip:], strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb), (steps, skip)


def test_an_epoch_has_steps_per_epoch_steps_and_resuming_mid_epoch_replays_them(
    runs_dir: Path,
) -> None:
    config = function_config(**REPEATED)
    whole_events = Recorder()
    whole = Trainer(config, sink=whole_events, out_dir=runs_dir)
    whole.run()
    assert whole_events.of("run_started")[0].steps_per_epoch == 7
    steps = whole_events.of("step")
    assert [(s.epoch, s.step) for s in steps] == [(e, k) for e in (1, 2) for k in range(1, 8)]
    assert [s.global_step for s in steps] == list(range(1, 15))
    assert {s.steps_per_epoch for s in steps} == {7}
    assert runs.read_summary(whole.run_dir)["global_step"] == 14

    recorder = Recorder()
    first = Trainer(config, sink=recorder, out_dir=runs_dir)

    def stop_mid_epoch(event: Event) -> None:  # epoch 2, step 3: the second pass's start
        if isinstance(event, StepMetrics) and event.global_step == 10:
            first.stop()

    recorder.hooks.append(stop_mid_epoch)
    assert first.run()["status"] == "stopped"
    again = Recorder()
    resumed = Trainer.from_run_dir(first.run_dir, sink=again)
    assert resumed.run()["status"] == "finished"
    assert [s.global_step for s in again.of("step")] == list(range(11, 15))
    assert_same_weights(resumed.model, whole.model)
    same_rows(epoch_rows(first.run_dir), epoch_rows(whole.run_dir))


# --- 6. L-BFGS, precision, float64 --------------------------------------------------------------


def test_lbfgs_fits_a_small_function_to_a_low_rmse(runs_dir: Path) -> None:
    config = function_config(
        **{"data.function": "sin(pi*x1) + x2**2", "model.width": [2, 1], "train.epochs": 2,
           "optim.lbfgs_iters": 20, "kan.grid_size": 8}
    )  # fmt: skip
    trainer = Trainer(config, sink=Recorder(), out_dir=runs_dir)
    summary = trainer.run()
    assert isinstance(trainer.optimizer, torch.optim.LBFGS)
    assert summary["test_rmse"] < 2e-3, summary["test_rmse"]  # the targets' std is ~0.8


def test_lbfgs_turns_mixed_precision_off_with_a_notice_and_trains_in_fp32(
    runs_dir: Path,
) -> None:
    config = function_config(
        **{"train.mixed_precision": "bf16", "train.dtype": "float32", "train.epochs": 1}
    )
    recorder = Recorder()
    trainer = Trainer(config, sink=recorder, out_dir=runs_dir)
    assert trainer.run()["status"] == "finished"
    notices = [n for n in recorder.of("notice") if "mixed_precision" in n.message]
    assert len(notices) == 1, [n.message for n in recorder.of("notice")]
    assert "off with optim.optimizer=lbfgs" in notices[0].message
    assert notices[0].level == "warning"
    assert trainer.stepper.amp_dtype is None
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_train_dtype_float64_trains_float64_weights_on_float64_batches(runs_dir: Path) -> None:
    # no grid update: the last one would leave L-BFGS no history to look at
    config = function_config(
        **{"train.dtype": "float64", "train.epochs": 1, "kan.grid_update_every": 0}
    )
    trainer = Trainer(config, sink=Recorder(), out_dir=runs_dir)
    assert trainer.run()["status"] == "finished"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float64}
    buffers = {  # but the outside-grid share, a float32 statistic in every layer dtype
        b.dtype
        for n, b in trainer.model.named_buffers()
        if b.is_floating_point() and "_outside" not in n
    }
    assert buffers == {torch.float64}
    x, y = next(trainer.data.batches("train", 64, shuffle=False))
    assert x.dtype == y.dtype == torch.float64
    state = trainer.optimizer.state_dict()["state"][0]  # L-BFGS's curvature history
    assert state["d"].dtype == torch.float64
    saved = torch.load(trainer.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert {v.dtype for v in saved["model"].values() if v.is_floating_point()} == {torch.float64}


# --- 4. resume across grid stages ---------------------------------------------------------------

STAGED = {"kan.grid_schedule": [3, 5, 8], "kan.grid_stage_epochs": 1, "train.epochs": 4}


@pytest.fixture(scope="module")
def staged_whole(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Recorder]:
    """One uninterrupted run through the stages 3, 5 and 8 (epochs 1, 2, 3-4)."""
    recorder = Recorder()
    trainer = Trainer(
        function_config(**STAGED), sink=recorder, out_dir=tmp_path_factory.mktemp("runs")
    )
    assert trainer.run()["status"] == "finished"
    return trainer, recorder


def test_grid_stages_refine_at_each_stage_start_and_rows_name_their_grid(staged_whole) -> None:
    trainer, recorder = staged_whole
    assert [row["grid_size"] for row in epoch_rows(trainer.run_dir)] == [3, 5, 8, 8]
    extended = [n.message for n in recorder.of("notice") if "grid extended" in n.message]
    assert extended == ["grid extended to 5 intervals (epoch 2)",
                        "grid extended to 8 intervals (epoch 3)"]  # fmt: skip
    assert {layer.grid_size for layer in trainer.kan.values()} == {8}


@pytest.mark.parametrize("where", ["mid_stage", "stage_boundary", "killed_at_stage_boundary"])
def test_a_run_stopped_and_resumed_across_grid_stages_equals_the_uninterrupted_one(
    where: str, staged_whole, runs_dir: Path
) -> None:
    """mid_stage: stopped at epoch 4's second step, inside the grid-8 stage after its last grid
    update, so last.pt holds grid 8 and L-BFGS's history (the model is built at grid 3).
    stage_boundary: stopped at epoch 2's end; the stop is served at epoch 3's start, after its
    refine, so last.pt holds grid 8 at (3, 0). killed_at_stage_boundary: killed just after
    epoch 2's last.pt (its copy put back over the later one): the resume refines 5 -> 8."""
    whole, _ = staged_whole
    recorder = Recorder()
    first = Trainer(function_config(**STAGED), sink=recorder, out_dir=runs_dir)
    last = first.run_dir / "checkpoints" / "last.pt"
    kept = first.run_dir / "kept.pt"

    def stop(event: Event) -> None:
        if first.controls.stopping:
            return
        if where == "mid_stage" and isinstance(event, StepMetrics) and event.global_step == 14:
            first.stop()
        if where == "stage_boundary" and isinstance(event, EpochEnd) and event.epoch == 2:
            first.stop()
        killed = where.startswith("killed") and isinstance(event, CheckpointWritten)
        if killed and event.reason == "epoch" and event.epoch == 2:
            shutil.copyfile(last, kept)
            first.stop()

    recorder.hooks.append(stop)
    assert first.run()["status"] == "stopped"
    if where.startswith("killed"):
        os.replace(kept, last)
    saved = torch.load(last, weights_only=True)
    grids = {k: v.shape[1] for k, v in saved["model"].items() if k.endswith(".grid")}
    assert set(grids.values()) == {(5 if where.startswith("killed") else 8) + 2 * 3 + 1}
    assert bool(saved["optimizer"]["state"]) == (where == "mid_stage")  # history, or refined

    again = Recorder()
    resumed = Trainer.from_run_dir(first.run_dir, sink=again)
    assert resumed.run()["status"] == "finished"
    extended = [n.message for n in again.of("notice") if "grid extended" in n.message]
    refined = ["grid extended to 8 intervals (epoch 3)"] if where.startswith("killed") else []
    assert extended == refined
    assert_same_weights(resumed.model, whole.model)
    same_rows(epoch_rows(first.run_dir), epoch_rows(whole.run_dir))
    got, expected = (runs.read_summary(run.run_dir) for run in (first, whole))
    assert got["grid_updates"] == expected["grid_updates"]
    assert got["global_step"] == expected["global_step"]


def test_grid_extension_is_no_gradient_norm_spike(tmp_path: Path) -> None:
    """A finer grid changes the gradients' scale: the norms before it are no yardstick."""
    recorder = Recorder()
    config = function_config(
        **{
            "kan.grid_schedule": [3, 20],
            "kan.grid_stage_epochs": 3,
            "train.epochs": 5,
            "train.steps_per_epoch": 20,
            "optim.lbfgs_iters": 20,
        }  # fmt: skip
    )
    trainer = Trainer(config, sink=recorder, out_dir=tmp_path)
    assert trainer.run()["status"] == "finished"
    refined_at = 3 * 20  # the first step of epoch 4
    warned = [w.global_step for w in recorder.of("grad_norm_warning")]
    assert not [step for step in warned if refined_at <= step < refined_at + 20], warned

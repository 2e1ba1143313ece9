"""Training under torchrun: 2 CPU processes (gloo) on digits against one process.

Run by torchrun (`torchrun --nproc-per-node 2 tests/functional/test_ddp.py OUT`), this file is
also the worker of the Trainer-level tests: each rank trains, then saves its own final state and
summary under OUT, which a single process never could show (rank 0 alone writes the run folder).

Why the metrics of 2 processes match 1 so closely: the `kan` baseline has no BatchNorm, and each
rank takes its exact half of every global batch, so the averaged gradient is the one-process
gradient up to float rounding (a different summation order), and the grid updates see the same
gathered samples. Nothing else differs, hence tolerances of float noise grown over ~40 Adam steps,
not of training noise. Models with BatchNorm normalise with per-rank batch statistics and are
expected to differ more; the CLI test uses one to check the plumbing, not the numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kan_engine import distributed, runs
from kan_engine.config import DataSection, RunConfig, apply_overrides
from kan_engine.data import load
from kan_engine.errors import ConfigError
from kan_engine.events import Event, StepMetrics
from kan_engine.run_setup import build_model, evaluate
from kan_engine.trainer import Trainer

HERE = Path(__file__).resolve()
TORCHRUN = Path(sys.executable).with_name("torchrun")
WAIT = 300  # seconds: a safety net for a hung launch, never a synchronisation delay
POISONED_STEP = 7  # the step whose batch holds a NaN (on rank 1 only, under torchrun)
OVERRIDES: dict[str, Any] = {
    "model.name": "kan",
    "data.dataset": "digits",
    "data.test_every_epoch": True,
    "train.epochs": 2,
    "train.batch_size": 64,  # 1295 train samples: 20 full batches, then 15 split 8 + 7
    "train.log_every": 5,
    "train.device": "cpu",
    "train.patience": 0,
    "schedule.warmup_epochs": 0.5,
    "kan.prob_update_grid": 0.2,
    "kan.grid_update_every": 6,  # grid updates for sure, at steps the random ones may miss
}


def tiny() -> RunConfig:
    return apply_overrides(RunConfig(), OVERRIDES, source="test")


def poison(trainer: Trainer, rank: int) -> None:
    """A NaN in the first KAN layer's output at POISONED_STEP, on `rank` only."""
    trainer.setup()

    def nan_output(module: torch.nn.Module, args: Any, output: torch.Tensor) -> Any:
        due = trainer.forward_step == POISONED_STEP and trainer.dist.rank == rank
        return output * float("nan") if due and module.training else None

    trainer.kan["kan.0"].register_forward_hook(nan_output)


def launch(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(TORCHRUN), "--nproc-per-node", "2", *args],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def worker(out: Path) -> None:
    """One rank: a poisoned run to the end, then a run that rank 0 alone asks to stop."""
    torch.set_num_threads(1)
    with distributed.launch("cpu") as dist:
        trainer = Trainer(tiny(), sink=lambda event: None, out_dir=out / "runs", preset_name="ddp")
        poison(trainer, rank=1)
        result = {"state": trainer.model.state_dict(), "summary": trainer.run()}
        torch.save(result, out / f"{dist.rank}.pt")

        def stop_at_first_step(event: Event) -> None:  # called on rank 0 only
            if isinstance(event, StepMetrics):
                stopper.stop()

        stopper = Trainer(tiny(), sink=stop_at_first_step, out_dir=out / "stop", preset_name="stop")
        torch.save({"summary": stopper.run()}, out / f"stop-{dist.rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    result = launch(str(HERE), str(out), out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def rank_file(out: Path, name: str) -> dict[str, Any]:
    return torch.load(out / name, weights_only=True)


def timeless(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its clock (each rank times itself)."""
    return {key: value for key, value in summary.items() if key != "seconds"}


def epoch_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in runs.read_metrics(run_dir) if r["event"] == "epoch"]


@pytest.mark.slow
def test_two_processes_stay_identical_and_train_like_one(two_ranks: Path, tmp_path: Path) -> None:
    (run_dir,) = (two_ranks / "runs").iterdir()  # one run folder for both ranks
    first, second = rank_file(two_ranks, "0.pt"), rank_file(two_ranks, "1.pt")
    summary = first["summary"]
    assert timeless(summary) == timeless(second["summary"]) == timeless(runs.read_summary(run_dir))
    assert summary["status"] == "finished" and summary["processes"] == 2
    assert summary["skipped_steps"] == 1  # rank 1's NaN skipped the step on both ranks
    assert summary["grid_updates"] >= 2 * len(summary["grid_updates_per_layer"])
    assert first["state"].keys() == second["state"].keys()
    for name, tensor in first["state"].items():  # parameters and grids, bit for bit
        assert torch.equal(tensor, second["state"][name]), name

    reference = Trainer(tiny(), sink=lambda event: None, out_dir=tmp_path, preset_name="one")
    poison(reference, rank=0)
    alone = reference.run()
    assert alone["skipped_steps"] == 1 and alone["global_step"] == summary["global_step"]
    assert alone["grid_updates"] == summary["grid_updates"]
    val_size = load(tiny().data, device=torch.device("cpu"), seed=0).sizes["val"]
    for two, one in zip(epoch_rows(run_dir), epoch_rows(reference.run_dir), strict=True):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-3), key
        for key in ("train_acc", "test_acc"):
            assert two[key] == pytest.approx(one[key], abs=2e-3), key
        assert abs(two["val_acc"] - one["val_acc"]) <= 1 / val_size  # one sample at most
    # Compare what the models compute, not their coefficients: digits' border pixels are constant,
    # so the grid refit leaves the coefficients of those inputs to rounding (measured: 0.8 % apart
    # in norm while the logits agree to 1e-4).
    ranks = build_model(reference.config, reference.data, torch.device("cpu"))
    ranks.load_state_dict(first["state"])
    x, _ = next(reference.data.batches("test", 10_000, shuffle=False))
    with torch.no_grad():
        two_logits, one_logits = ranks.eval()(x), reference.model.eval()(x)  # (N, classes)
    assert (two_logits - one_logits).norm() <= 1e-3 * one_logits.norm()
    assert torch.equal(two_logits.argmax(1), one_logits.argmax(1))

    # the checkpoint is the unwrapped model: one process evaluates it to the same numbers
    best = torch.load(runs.checkpoint_path(run_dir, "best"), weights_only=True)
    assert not any(key.startswith("module.") for key in best["model"])
    single = evaluate(run_dir)
    assert single["acc"] == summary["test_acc"]
    assert single["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


@pytest.mark.slow
def test_a_stop_on_rank_0_stops_every_rank_and_resumes_in_one_process(two_ranks: Path) -> None:
    first, second = (rank_file(two_ranks, f"stop-{r}.pt")["summary"] for r in (0, 1))
    assert timeless(first) == timeless(second)  # same step and status: no rank left waiting
    assert first["status"] == "stopped" and first["global_step"] == OVERRIDES["train.log_every"]
    (run_dir,) = (two_ranks / "stop").iterdir()
    last = torch.load(runs.checkpoint_path(run_dir, "last"), weights_only=True)
    assert last["counters"]["global_step"] == first["global_step"]
    assert last["counters"]["epoch_samples"] == first["global_step"] * 64  # every rank's samples

    resumed = Trainer.from_run_dir(run_dir, sink=lambda event: None).run()
    assert resumed["status"] == "finished" and resumed["processes"] == 1
    assert [row["epoch"] for row in epoch_rows(run_dir)] == [1, 2]


@pytest.mark.slow
def test_the_command_under_torchrun_reports_once_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The real `kan-tui run --headless` under torchrun, with BatchNorm (fast_exact_kan); Ctrl-C
    reaches torchrun, which forwards SIGINT to both workers: they agree on a step and stop."""
    command = [
        str(TORCHRUN), "--nproc-per-node", "2", "-m", "kan_tui", "run", "--headless",
        "--dataset", "digits", "--model", "fast_exact_kan", "--epochs", "500",
        "--batch-size", "64", "--device", "cpu", "--out", "out",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    for line in process.stdout:  # the first epoch line says both ranks are training
        lines.append(line)
        if line.startswith("epoch 1/500"):
            break
    process.send_signal(signal.SIGINT)
    rest, errors = process.communicate(timeout=WAIT)
    output = "".join(lines) + rest
    (run_dir,) = (tmp_path / "out").iterdir()
    assert sum(line.startswith("run out/") for line in output.splitlines()) == 1, output
    assert "torchrun: 2 processes; global batch 64 = 32 per process" in output
    assert errors.count("interrupted: the run can continue") == 1
    assert "forcefully exiting" not in errors  # both workers ended by themselves
    summary = json.loads((run_dir / runs.SUMMARY).read_text())
    assert summary["status"] == "stopped" and summary["processes"] == 2
    assert evaluate(run_dir, checkpoint="last")["acc"] > 0.5  # one process reads it


def test_the_parts_of_the_ranks_make_the_batch_of_one_process() -> None:
    bundle = load(DataSection(dataset="digits"), device=torch.device("cpu"), seed=5)
    cases = (("train", True, 64, True), ("val", False, 141, False))  # val: 143 = 141 + 1 + 1 + 0
    for split, shuffle, batch, augment in cases:
        options = {"shuffle": shuffle, "epoch": 3, "skip": 1, "augment": augment}
        alone = list(bundle.batches(split, batch, **options))
        parts = [list(bundle.batches(split, batch, **options, rank=r, world=3)) for r in range(3)]
        assert [len(p) for p in parts] == [len(alone)] * 2 + [len(alone) - (split == "val")]
        for step, (x, y) in enumerate(alone):  # rank order, contiguous parts
            pieces = [p[step] for p in parts if step < len(p)]
            assert torch.equal(torch.cat([px for px, _ in pieces]), x)
            assert torch.equal(torch.cat([py for _, py in pieces]), y)
    # a last train batch too small to give each rank 2 samples is dropped (BatchNorm needs 2)
    assert bundle.steps("train", 128) == 11 and bundle.steps("train", 128, world=8) == 10


def test_the_global_batch_must_split_evenly() -> None:
    assert distributed.per_rank_batch(256, 4) == 64
    with pytest.raises(ConfigError, match="train.batch_size: 100 .* 3 processes"):
        distributed.per_rank_batch(100, 3)


def test_each_process_takes_the_gpu_of_its_local_rank() -> None:
    assert distributed.device_for("cpu", 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: 'cuda:1'"):
        distributed.device_for("cuda:1", 0)
    with pytest.raises(ConfigError, match="'mps'"):
        distributed.device_for("mps", 0)


def test_one_process_is_not_a_distributed_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched()
    assert distributed.current() == distributed.SINGLE  # no process group joined


if __name__ == "__main__":
    worker(Path(sys.argv[1]))

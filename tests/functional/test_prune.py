"""`kan-tui prune` and `kan-tui attribution` through the real CLI, on tiny runs trained here.

A pruned run must be an ordinary run folder (eval, export and resume work on it), and every bad
input must end in exit 2 with one line and no run folder made.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REGRESSION, TINY, error_line
from typer.testing import CliRunner, Result

from kan_engine import checkpoint as ckpt
from kan_engine import runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.trainer import Trainer
from kan_tui.cli import app


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def trained(folder: Path, overrides: dict[str, Any]) -> Path:
    config = apply_overrides(RunConfig(), overrides, "test")
    trainer = Trainer(config, sink=lambda e: None, out_dir=folder / "runs", preset_name="tiny")
    trainer.run()
    return trainer.run_dir


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV whose target depends on `speed` alone (`angle` is noise-free filler)."""
    folder = tmp_path_factory.mktemp("table")
    x = np.random.default_rng(0).uniform(-1, 1, (300, 2))
    y = np.sin(np.pi * x[:, 0]) + 0.01 * x[:, 1]
    rows = "".join(f"{a},{b},{c}\n" for (a, b), c in zip(x, y, strict=True))
    (folder / "t.csv").write_text("speed,angle,y\n" + rows)
    return folder / "t.csv"


@pytest.fixture(scope="module")
def fit(tmp_path_factory: pytest.TempPathFactory, table: Path) -> Path:
    """A [2, 6, 1] flat KAN fitted to the table (test RMSE ~0.012 of a target in [-1, 1]; ~2 s),
    with the KAN paper's sparsity regulariser, which input attribution needs (see `attribution`)."""
    overrides = {**REGRESSION, "data.data_dir": str(table), "model.width": [2, 6, 1]}
    fitting = {"train.epochs": 20, "train.batch_size": 32, "optim.lr": 0.03, "kan.reg_weight": 3e-3}
    return trained(tmp_path_factory.mktemp("fit"), {**overrides, **fitting})


def new_runs(out: Path) -> list[Path]:
    return sorted(out.iterdir()) if out.exists() else []


def test_prune_reports_what_it_kept_and_three_scores_and_writes_an_ordinary_run(
    fit: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    result = cli("prune", fit, "--threshold", "0.2", "--epochs", "2", "--out", out)
    assert result.exit_code == 0, result.output
    kept = re.search(r"kept (\d+) of 18 edges, hidden width 6 -> (\d)", result.stdout)
    assert kept, result.stdout
    scores = re.search(r"test RMSE: original \S+, pruned \S+, fine-tuned \S+", result.stdout)
    assert scores, result.stdout
    (run,) = new_runs(out)
    config = runs.read_config(run)
    assert config.model.width == [2, int(kept.group(2)), 1]
    assert config.model.init_from == runs.INIT and config.train.epochs == 2
    assert runs.read_summary(run)["status"] == "finished"
    evaluated = cli("eval", run)
    assert evaluated.exit_code == 0 and "rmse" in evaluated.stdout
    exported = cli("export", run, "--format", "safetensors", "--out", tmp_path / "m.safetensors")
    assert exported.exit_code == 0, exported.output  # the masks load through models.load
    inspected = cli("inspect", run, "--layer", "0")
    assert inspected.exit_code == 0, inspected.output


def test_epochs_0_writes_the_pruned_run_stopped_and_resume_fine_tunes_it(
    fit: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    result = cli("prune", fit, "-t", "0.2", "--epochs", "0", "--out", out)
    assert result.exit_code == 0, result.output
    assert "fine-tuned" not in result.stdout.splitlines()[2]  # only before and after pruning
    assert "not fine-tuned (--epochs 0): kan-tui resume" in result.stdout
    (run,) = new_runs(out)
    assert runs.read_summary(run)["status"] == "stopped"
    last = ckpt.load(runs.checkpoint_path(run, "last"))["model"]
    start = ckpt.load(run / runs.INIT)["model"]
    assert all(torch.equal(last[name], start[name]) for name in start)
    pruned_rmse = re.search(r"pruned (\S+)", result.stdout).group(1)
    evaluated = cli("eval", run)
    assert f"rmse {pruned_rmse}" in evaluated.stdout, (evaluated.stdout, pruned_rmse)
    resumed = cli("resume", run, "--headless")
    assert resumed.exit_code == 0, resumed.output
    assert runs.read_summary(run)["status"] == "finished"


def test_attribution_ranks_the_csv_columns(fit: Path) -> None:
    """y = sin(pi speed) + 0.01 angle: angle scores 0.04 here (0.04-0.23 over seeds 0-3; without
    the regulariser 0.12-0.39, as its edges into the hidden layer cancel further on)."""
    result = cli("attribution", fit)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [row[1] for row in rows] == ["speed", "angle"]
    assert rows[0][2] == "1.000" and float(rows[1][2]) < 0.3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--threshold", "nan"], "--threshold: must be a number >= 0 (got nan)"),
        (["--threshold", "-0.5"], "--threshold: must be a number >= 0"),
        (["--threshold", "2"], "removes every node of hidden layer 1; the largest threshold"),
    ],
)
def test_bad_thresholds_exit_2_and_make_no_run(
    fit: Path, tmp_path: Path, args: list[str], fragment: str
) -> None:
    out = tmp_path / "pruned"
    error_line(cli("prune", fit, *args, "--out", out), 2, fragment)
    assert new_runs(out) == []


def test_a_missing_run_and_a_model_without_kan_layers_exit_2(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    error_line(cli("prune", tmp_path / "nothing", "-t", "0.1", "--out", out), 2, "not a run folder")
    mlp = {**REGRESSION, "data.data_dir": str(table), "model.name": "flat_mlp", "train.epochs": 1}
    mlp_run = trained(tmp_path, mlp)
    error_line(cli("prune", mlp_run, "-t", "0.1", "--out", out), 2, "has no KAN layers to prune")
    error_line(cli("attribution", mlp_run), 2, "has no KAN layers to prune")
    assert new_runs(out) == []


def test_a_cnn_front_end_gets_edges_masked_only_and_no_input_attribution(tmp_path: Path) -> None:
    overrides = {**TINY, "model.name": "rapid_kan_tiny", "train.steps_per_epoch": 3}
    run = trained(tmp_path, {**overrides, "train.epochs": 1})
    out = tmp_path / "pruned"
    result = cli("prune", run, "-t", "0.05", "--epochs", "0", "--out", out)
    assert result.exit_code == 0, result.output
    assert "its widths are fixed, edges masked only" in result.stdout
    (pruned,) = new_runs(out)
    assert runs.read_config(pruned).model.width == []
    error_line(cli("attribution", run), 2, "input attribution needs KAN layers on the inputs")

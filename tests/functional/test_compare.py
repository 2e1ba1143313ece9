"""`kan-tui compare` and `kan_engine.compare`: configs per model, time to accuracy, the table.

One real comparison on digits (two small models, two epochs, through the CLI) is shared by the
tests that read its output; the table and the JSON are checked against the runs' own
metrics.jsonl rows, recomputed here independently. One real regression comparison (the default
flat models on a function table) checks the fit table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import regression_args
from typer.testing import CliRunner, Result

from kan_engine import compare, models, runs
from kan_engine.config import RunConfig, apply_overrides
from kan_engine.errors import ConfigError
from kan_engine.trainer import Trainer
from kan_tui.cli import app

BASE = apply_overrides(RunConfig(), {"data.dataset": "digits", "train.device": "cpu"}, "test")


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


# ---------------------------------------------------------------------- pure parts


def test_time_to_accuracy_counts_training_seconds_up_to_the_first_crossing() -> None:
    rows = [
        {"epoch": 1, "seconds": 9.0, "train_seconds": 2.0, "val_acc": 0.80, "test_acc": 0.86},
        {"epoch": 2, "seconds": 9.0, "train_seconds": 3.0, "val_acc": 0.91, "test_acc": 0.84},
        {"epoch": 3, "seconds": 4.5, "val_acc": 0.925, "test_acc": None},  # no train_seconds
    ]
    to_val = compare.time_to_accuracy(rows, "val_acc", (0.85, 0.90, 0.92, 0.93))
    assert to_val == {
        0.85: compare.Reach(2, 5.0),
        0.90: compare.Reach(2, 5.0),
        0.92: compare.Reach(3, 9.5),  # an old row without train_seconds counts its seconds
        0.93: None,
    }
    # the first crossing counts, even when a later epoch falls back below the threshold
    assert compare.time_to_accuracy(rows, "test_acc", (0.85,)) == {0.85: compare.Reach(1, 2.0)}


def test_configs_share_the_budget_and_the_kan_baseline_keeps_its_own_settings() -> None:
    configs = compare.model_configs(BASE, ["cnn", "kan", "rapid_kan_lite"])
    assert [c.model.name for c in configs.values()] == ["cnn", "kan", "rapid_kan_lite"]
    assert all(c.data.test_every_epoch for c in configs.values())
    assert configs["cnn"].optim == configs["rapid_kan_lite"].optim == BASE.optim
    kan = configs["kan"]
    assert kan.optim.lr == 1e-3
    assert (kan.optim.lr_mult.kan, kan.optim.lr_mult.other) == (1.0, 1.0)
    assert kan.kan.scale_base == models.ORIGINAL_DEFAULTS["scale_base"]
    assert kan.kan.grid_range == models.ORIGINAL_DEFAULTS["grid_range"]
    assert kan.kan.init == models.ORIGINAL_DEFAULTS["init"]
    for field in ("train", "schedule"):  # the budget is the same for everyone
        assert getattr(kan, field) == getattr(configs["cnn"], field)
    same = compare.model_configs(BASE, ["kan"], baseline_settings=False)["kan"]
    assert same.optim == BASE.optim and same.kan == BASE.kan


def test_batch_scaling_scales_every_models_lr_and_records_it() -> None:
    per_model = compare.parse_model_sets(["kan:optim.lr=0.02"], ["cnn", "kan"])
    configs = compare.model_configs(BASE, ["cnn", "kan"], batch_size=256, per_model=per_model)
    cnn = configs["cnn"]
    assert cnn.train.batch_size == configs["kan"].train.batch_size == 256
    assert math.isclose(cnn.optim.lr, BASE.optim.lr * 2)  # sqrt(256 / 64)
    assert "batch 256 (from 64)" in cnn.description and "sqrt rule" in cnn.description
    assert configs["kan"].optim.lr == 0.02  # per-model overrides come last, as given
    unscaled = compare.model_configs(BASE, ["kan"], batch_size=256)["kan"]
    assert math.isclose(unscaled.optim.lr, 2e-3)  # the baseline's own 1e-3, scaled
    linear = compare.scale_batch(BASE, 16, "linear")
    assert math.isclose(linear.optim.lr, BASE.optim.lr / 4)
    assert compare.scale_batch(BASE, 128, "none").optim.lr == BASE.optim.lr
    assert compare.scale_batch(BASE, 64) is BASE
    with pytest.raises(ConfigError, match="--batch-size: train.batch_size"):
        compare.scale_batch(BASE, 0)


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("optim.lr=0.1", "expected MODEL:SECTION.KEY=VALUE"),
        ("kan:optim.lr", "expected MODEL:SECTION.KEY=VALUE"),
        ("rapid_kan:optim.lr=0.1", "'rapid_kan' is not compared"),
    ],
)
def test_bad_per_model_override(item: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        compare.parse_model_sets([item], ["cnn", "kan"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--models", "cnn,resnet"], ["--models", "unknown model 'resnet'", "rapid_kan_lite"]),
        (["--models", "cnn,cnn"], ["--models", "given twice: cnn"]),
        (["--models", "cnn", "--batch-size", "big"], ["--batch-size", "whole number"]),
        (["--models", "cnn", "--set-for", "kan:optim.lr=1"], ["--set-for", "not compared"]),
        (["--models", "kan", "--set-for", "kan:optim.lr=-1"], ["--set-for kan", "optim.lr"]),
        (["--models", "cnn", "--json", "missing/out.json"], ["--json", "existing folder"]),
    ],
)
def test_bad_compare_options_exit_2_with_one_line(
    args: list[str], fragments: list[str], tmp_path: Path
) -> None:
    result = cli("compare", "--dataset", "digits", "--out", str(tmp_path / "runs"), *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing trained, no folder left behind


@pytest.mark.parametrize(("code", "trained"), [(1, ["cnn", "kan"]), (130, ["cnn"])])
def test_a_failed_model_lets_the_others_run_a_stopped_one_ends_the_comparison(
    code: int, trained: list[str], tmp_path: Path
) -> None:
    seen: list[str] = []

    def train(trainer: Trainer) -> int:  # stands in for a run that failed or was stopped
        seen.append(trainer.config.model.name)
        return code

    comparison = compare.run_models(
        compare.model_configs(BASE, ["cnn", "kan"]),
        out_dir=tmp_path,
        preset_name="lite",
        make_sink=lambda: lambda event: None,
        train=train,
    )
    assert seen == trained
    assert comparison.exit_code == code
    assert comparison.results == []  # no summary.json: no row
    assert json.loads((comparison.folder / "compare.json").read_text())["exit_code"] == code


# ---------------------------------------------------------------------- one real comparison


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, Any]]:
    """kan and cnn on digits, 2 epochs each (kan stays below 85 %, the cnn passes 93 %)."""
    tmp = tmp_path_factory.mktemp("compare")
    out, json_path = tmp / "runs", tmp / "tta.json"
    result = cli(
        "compare",
        "--dataset", "digits",
        "--models", "kan,cnn",
        "--epochs", "2",
        "--batch-size", "64",
        "--device", "cpu",
        "--set", "train.log_every=5",
        # the lite preset's regularisation slows the first epochs down: off for this fixture
        "--set", "data.augment=false",
        "--set", "data.erase_prob=0",
        "--set", "train.ema_decay=0",
        "--set", "train.label_smoothing=0",
        "--out", str(out),
        "--json", str(json_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result, json.loads(json_path.read_text())


def expected_reach(run_dir: Path, key: str, threshold: float) -> dict[str, Any] | None:
    """The first epoch row of metrics.jsonl reaching `threshold`, read straight from the file."""
    lines = (run_dir / runs.METRICS).read_text().splitlines()
    elapsed = 0.0
    for row in map(json.loads, lines):
        if row["event"] != "epoch":
            continue
        elapsed += row["train_seconds"]
        assert row["train_seconds"] <= row["seconds"]  # evaluation is not counted
        if row[key] >= threshold:
            return {"epoch": row["epoch"], "seconds": elapsed}
    return None


def test_table_and_json_come_from_the_runs_metrics(
    compared: tuple[Result, dict[str, Any]],
) -> None:
    result, data = compared
    assert [m["model"] for m in data["models"]] == ["kan", "cnn"]
    assert data["thresholds"] == ["85", "90", "92", "93"]
    assert data["environment"]["device"].startswith("cpu")
    reached = unreached = 0
    for model in data["models"]:
        run_dir = Path(model["run_dir"])
        summary = runs.read_summary(run_dir)
        assert model["test_acc"] == summary["test_acc"] and model["status"] == "finished"
        assert model["params"] == summary["params"]["total"]
        for split in ("val", "test"):
            for pct, reach in model[f"to_{split}"].items():
                expected = expected_reach(run_dir, f"{split}_acc", int(pct) / 100)
                assert reach == pytest.approx(expected)
                reached += reach is not None
                unreached += reach is None
                if split == "test":  # the printed test table holds the same cell
                    cell = "—" if reach is None else f"{reach['epoch']} ({reach['seconds']:.1f} s)"
                    row = next(
                        line
                        for line in result.stdout.splitlines()
                        if f"| {model['model']} " in line
                    )
                    assert f" {cell} " in row
    assert reached and unreached  # both kinds of cells were exercised


def test_each_model_has_its_own_run_folder_and_the_group_keeps_the_table(
    compared: tuple[Result, dict[str, Any]],
) -> None:
    result, data = compared
    group = Path(data["folder"])
    assert sorted(p.name for p in group.iterdir()) == ["cnn", "compare.json", "compare.md", "kan"]
    for model in data["models"]:
        run_dir = Path(model["run_dir"])
        assert run_dir.parent == group / model["model"]
        assert runs.read_config(run_dir).model.name == model["model"]
    assert json.loads((group / "compare.json").read_text())["models"] == data["models"]
    table = (group / "compare.md").read_text()
    assert "to test accuracy" in table and "to validation accuracy" in table
    assert table.strip() in result.stdout


# ---------------------------------------------------------------------- a regression


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, Any]]:
    """The default models of a regression (no --models) on a function table, 2 epochs each."""
    tmp = tmp_path_factory.mktemp("fit")
    out, json_path = tmp / "runs", tmp / "fit.json"
    result = cli("compare", *regression_args(tmp), "--out", str(out), "--json", str(json_path))
    assert result.exit_code == 0, result.output
    return result, json.loads(json_path.read_text())


def test_a_regression_compares_the_flat_models_on_their_rmse_mae_and_r2(
    fitted: tuple[Result, dict[str, Any]],
) -> None:
    result, data = fitted
    assert [m["model"] for m in data["models"]] == list(compare.REGRESSION_MODELS)
    for model in data["models"]:
        summary = runs.read_summary(Path(model["run_dir"]))
        assert model["task"] == "regression" and model["to_val"] == model["to_test"] == {}
        for key in compare.REGRESSION_KEYS:
            assert model[key] == summary[key] is not None, key
        row = next(line for line in result.stdout.splitlines() if f"| {model['model']} " in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2:6] == [f"{model[key]:.4g}" for key in compare.REGRESSION_KEYS]
        assert cells[1] == str(summary["params"]["total"])  # a count below a thousand as it is
    table = (Path(data["folder"]) / "compare.md").read_text()
    assert "best val rmse | test rmse | test mae | test r²" in table
    assert "to test accuracy" not in table and "classification only" in table
    assert table.strip() in result.stdout

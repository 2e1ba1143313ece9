"""Function fitting through the real CLI (issue 18): `run --dataset function`, the refusals of a
bad formula or a config that does not fit the data (exit 2, one line naming the key, no run
folder left), `eval` of a run whose grid was extended, and `kan-tui symbolic` (CPU, seconds)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import error_line
from typer.testing import CliRunner, Result

from kan_tui.cli import app
from kan_tui.formatting import sig


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def train(out: Path, *args: str) -> Path:
    result = cli("run", "--headless", *args, "--out", out)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


def nothing_in(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("function")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAN_TUI_CONFIG", str(home / "config"))
        patch.setenv("KAN_TUI_CACHE", str(home / "cache"))
        patch.delenv("KAN_TUI_DATA", raising=False)
        yield home


# the function preset shortened: kan_exp_sin2 on grids 3 then 5, 10 L-BFGS steps an epoch
SHORT_FIT = ["-p", "function", "--set", "kan.grid_schedule=[3,5]", "--set",
             "kan.grid_stage_epochs=2", "--set", "train.steps_per_epoch=10", "--set",
             "data.function_train=400", "--epochs", "4"]  # fmt: skip


@pytest.fixture(scope="module")
def exp_sin_run(env: Path) -> Path:
    return train(env / "exp_sin", *SHORT_FIT)


def test_a_function_run_prints_regression_columns(isolated: Path) -> None:
    args = ["--dataset", "function", "--set", "data.function=2*x1 - 3*x2 + 1", "--model",
            "flat_kan", "--set", "model.width=[2,1]", "--set", "data.function_train=200",
            "--epochs", "2", "--device", "cpu", "--warmup-epochs", "0"]  # fmt: skip
    result = cli("run", "--headless", *args, "--out", "out")
    assert result.exit_code == 0, result.output
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    for line in epochs:
        for column in ("train_rmse", "val_rmse", "val_mae", "val_r2"):
            assert f" {column} " in line, line
        assert "acc" not in line, line
    assert re.search(r"^best val_rmse +\S", result.stdout, re.M), result.stdout
    assert re.search(r"^test_r2 +\S", result.stdout, re.M), result.stdout
    assert "function 2*x1 - 3*x2 + 1 on [-1, 1]^2" in result.stdout


@pytest.mark.parametrize(
    "formula",
    ["__import__('os')", "x1.real", "open('x')", "", "(" * 5000 + "x1" + ")" * 5000,
     "(" * 400 + "x1" + ")" * 400, "(lambda: x1)()", "sin.__globals__", "x1\x00"],
    ids=["import", "attribute", "open", "empty", "5000_parens", "400_parens", "lambda",
         "dunder", "nul"],
)  # fmt: skip
def test_a_hostile_formula_exits_2_naming_data_function_and_leaves_no_run(
    formula: str, isolated: Path
) -> None:
    result = cli("run", "--headless", *SHORT_FIT, "--set", f"data.function={formula}",
                 "--out", "out")  # fmt: skip
    error_line(result, 2, "data.function")
    assert nothing_in(isolated / "out")


@pytest.mark.parametrize(
    ("setting", "why"),
    [("train.batch_size=100", "the whole training split"),
     ("kan.reg_weight=0.01", "kan.reg_weight"),
     ("train.huber_delta=0.5", "train.huber_delta"),
     ("model.width=[2,40,40,1]", "4,096 parameters")],
)  # fmt: skip
def test_what_levenberg_marquardt_cannot_fit_exits_2_naming_the_optimizer(
    setting: str, why: str, isolated: Path
) -> None:
    result = cli("run", "--headless", *SHORT_FIT, "--set", "optim.optimizer=lm",
                 "--set", setting, "--out", "out")  # fmt: skip
    error_line(result, 2, "optim.optimizer", why)
    assert nothing_in(isolated / "out")


def test_lm_or_huber_on_a_classification_exits_2(isolated: Path) -> None:
    # the function preset's own optimizer is lm; the Huber loss is tried with lbfgs
    for key, sets in (
        ("optim.optimizer", []),
        ("train.huber_delta", ["optim.optimizer=lbfgs", "train.huber_delta=0.5"]),
    ):
        digits = ["--preset", "function", "--dataset", "digits", "--set", "data.task=auto",
                  "--set", "model.width=[64,2,10]"]  # fmt: skip
        extra = [arg for value in sets for arg in ("--set", value)]
        result = cli("run", "--headless", *digits, *extra, "--out", "out")
        error_line(result, 2, key, "classification")
        assert nothing_in(isolated / "out")


@pytest.mark.parametrize(
    ("setting", "key"),
    [("data.task=classification", "data.task"),
     ("model.width=[3,4,1]", "model.width"),
     ("kan.grid_schedule=[5,3]", "kan.grid_schedule"),
     ("train.ema_decay=0.5", "train.ema_decay")],  # the preset has a grid schedule
)  # fmt: skip
def test_a_config_that_does_not_fit_function_data_exits_2_naming_the_key(
    setting: str, key: str, isolated: Path
) -> None:
    result = cli("run", "--headless", *SHORT_FIT, "--set", setting, "--out", "out")
    error_line(result, 2, key)
    assert nothing_in(isolated / "out")


def test_eval_of_an_extended_run_loads_its_finer_grid(exp_sin_run: Path, env: Path) -> None:
    summary = json.loads((exp_sin_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_epoch"] >= 3  # on grid 5
    rows = [json.loads(line) for line in (exp_sin_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["grid_size"] for r in rows if r["event"] == "epoch"] == [3, 3, 5, 5]
    evaluated = cli("eval", exp_sin_run)
    assert evaluated.exit_code == 0, evaluated.output
    expected = "  ".join(f"{m} {sig(summary[f'test_{m}'])}" for m in ("rmse", "mae", "r2"))
    assert evaluated.stdout.startswith(f"test {expected}  loss "), evaluated.stdout
    last = cli("eval", exp_sin_run, "--checkpoint", "last", "--split", "val")
    assert last.exit_code == 0, last.output
    assert last.stdout.startswith("val rmse "), last.stdout


def test_symbolic_reads_exp_and_sin_off_the_fit_and_scores_the_formula(
    exp_sin_run: Path,
) -> None:
    result = cli("symbolic", exp_sin_run)
    assert result.exit_code == 0, result.output
    (formula,) = [line for line in result.stdout.splitlines() if line.startswith("y = ")]
    assert "exp(" in formula and "sin(" in formula, formula
    lines = re.findall(r"^test \(1,000\) (network|formula): rmse (\S+)", result.stdout, re.M)
    scores = {label: float(rmse) for label, rmse in lines}
    assert scores.keys() == {"network", "formula"}, result.stdout
    assert scores["network"] < 0.05 and scores["formula"] < 0.05, scores  # target std ~0.9


def test_symbolic_refuses_a_run_of_another_model_naming_model_name(env: Path) -> None:
    mlp = train(env / "mlp", "--dataset", "function", "--set", "data.function=x1*x2",
                "--model", "flat_mlp", "--set", "model.width=[2,4,1]", "--set",
                "data.function_train=100", "--epochs", "1", "--device", "cpu")  # fmt: skip
    error_line(cli("symbolic", mlp), 2, "model.name", "flat_mlp")


def test_symbolic_of_a_missing_run_folder_exits_2(isolated: Path) -> None:
    error_line(cli("symbolic", isolated / "nothing-here"), 2, "nothing-here")


def test_a_resumed_run_prints_its_own_epochs_counts_not_the_running_totals(
    env: Path, tmp_path: Path
) -> None:
    run_dir = train(tmp_path / "out", *SHORT_FIT)
    resumed = cli("resume", run_dir, "--headless", "--epochs", "5")
    assert resumed.exit_code == 0, resumed.output
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if r["event"] == "epoch"]
    before, after = epochs[-2]["grid_updates_per_layer"], epochs[-1]["grid_updates_per_layer"]
    this_epoch = max(after[name] - before.get(name, 0) for name in after)
    (line,) = [x for x in resumed.stdout.splitlines() if x.startswith("epoch 5/5")]
    assert f"grid_updates_this_epoch {this_epoch} " in line + " ", line


def test_lr_find_works_on_a_regression_and_refuses_lbfgs_and_lm(env: Path) -> None:
    found = cli("lr-find", "--dataset", "function", "--set", "data.function=x1*x2",
                "--model", "flat_kan", "--steps", "20", "--device", "cpu")  # fmt: skip
    assert found.exit_code == 0, found.output
    assert "suggested lr" in found.stdout
    refused = cli("lr-find", "--preset", "function", "--steps", "20")
    error_line(refused, 2, "optim.optimizer", "lm's damping")
    refused = cli("lr-find", "--preset", "function", "--set", "optim.optimizer=lbfgs")
    error_line(refused, 2, "optim.optimizer", "lbfgs's line search")

"""`kan-tui predict` and `kan-tui export` through the real CLI, on real tiny runs (issue 19).

Two runs are trained once per module (seconds on the CPU): the kan baseline on digits images and
on a CSV table (iris). Predictions are checked against the model itself on tensors normalised by
the run's own data bundle (an independent route to the same numbers); exports against the
PyTorch model on the whole test split (onnxruntime for ONNX); every bad input must end in exit 2
with one line naming the file or option, and leave nothing written.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import error_line
from typer.testing import CliRunner, Result

from kan_engine import data, models, runs, trained
from kan_engine.errors import ConfigError
from kan_engine.run_setup import evaluate
from kan_tui.cli import app

RUN = ["--model", "kan", "--device", "cpu", "--epochs", "2", "--warmup-epochs", "0"]
RUN += ["--batch-size", "64"]


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("use")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAN_TUI_CONFIG", str(home / "config"))
        patch.setenv("KAN_TUI_CACHE", str(home / "cache"))
        patch.delenv("KAN_TUI_DATA", raising=False)
        yield home


def train(out: Path, *args: str | Path) -> Path:
    result = cli("run", "--headless", *RUN, *args, "--out", out)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def digits_run(env: Path) -> Path:
    return train(env / "digits", "--dataset", "digits")


@pytest.fixture(scope="module")
def iris_csv(env: Path) -> Path:
    """Iris as a CSV with a header: four features and the species as text."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    path = env / "iris.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*iris.feature_names, "species"])
        for row, k in zip(iris.data, iris.target, strict=True):
            writer.writerow([*row, iris.target_names[k]])
    return path


@pytest.fixture(scope="module")
def csv_run(env: Path, iris_csv: Path) -> Path:
    return train(env / "csv", "--dataset", "csv", "--data-dir", iris_csv)


@pytest.fixture(scope="module")
def regression_run(env: Path) -> Path:
    """A CSV of a continuous target around 10 (so undoing the standardisation shows)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 3))
    y = 10 + 3 * x[:, 0] - 2 * x[:, 1] * x[:, 2]
    path = env / "plane.csv"
    rows = np.column_stack([x, y])
    lines = ["a,b,c,y", *(",".join(f"{v:.6f}" for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return train(env / "regression", "--dataset", "csv", "--data-dir", path)


def bundle_of(run_dir: Path) -> data.DataBundle:
    config = runs.read_config(run_dir)
    return data.load(config.data, device=torch.device("cpu"), seed=config.train.seed)


def model_logits(run_dir: Path, x: torch.Tensor) -> torch.Tensor:
    """The run's best model on stored inputs, normalised by the run's data bundle."""
    bundle = bundle_of(run_dir)
    model = trained.load(run_dir, "best", device=torch.device("cpu")).model
    with torch.no_grad():
        return model(bundle.normalize(x))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the checkpoint's inference data ----------------------------------------------------------


def test_checkpoint_keeps_the_training_splits_statistics(digits_run: Path) -> None:
    state = torch.load(runs.checkpoint_path(digits_run, "best"), weights_only=True)
    bundle = bundle_of(digits_run)
    entry = state["data"]
    assert entry["input_shape"] == [1, 8, 8] and entry["class_names"] == bundle.class_names
    assert torch.equal(entry["mean"], bundle.mean) and torch.equal(entry["std"], bundle.std)
    assert entry["task"] == "classification" and entry["target_mean"] is None


# --- predict ---------------------------------------------------------------------------------


def test_predict_on_test_gives_evals_accuracy(digits_run: Path, env: Path) -> None:
    out = env / "test.jsonl"
    result = cli("predict", digits_run, "test", "--out", out)
    assert result.exit_code == 0, result.output
    rows = records(out)
    acc = evaluate(digits_run, "test", "best")["acc"]
    assert sum(row["class"] == row["label"] for row in rows) / len(rows) == acc
    assert len(rows) == bundle_of(digits_run).sizes["test"]
    correct = sum(row["class"] == row["label"] for row in rows)
    assert f"accuracy {acc:.2%} ({correct} of {len(rows)})" in result.stdout
    top = rows[0]["top"]
    assert len(top) == 3 and top[0]["class"] == rows[0]["class"]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def write_pngs(folder: Path, x: np.ndarray) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    paths = [folder / f"digit-{k:02d}.png" for k in range(len(x))]
    for path, image in zip(paths, x, strict=True):
        Image.fromarray(image[0], "L").save(path)
    return paths


def test_predict_on_pngs_gives_the_models_classes(digits_run: Path, tmp_path: Path) -> None:
    """Digits test images written as PNGs (their stored 0..16 values), read back by predict:
    the classes the model gives those very tensors, for a folder and for a glob alike."""
    raw = data.read(runs.read_config(digits_run).data)
    x = raw.x_test[:24]
    write_pngs(tmp_path / "pngs", x)
    expected = model_logits(digits_run, torch.from_numpy(x)).argmax(1).tolist()
    names = bundle_of(digits_run).class_names
    for inputs in (tmp_path / "pngs", f"{tmp_path}/pngs/*.png"):
        out = tmp_path / "out.csv"
        result = cli("predict", digits_run, inputs, "--top-k", "2", "--out", out)
        assert result.exit_code == 0, result.output
        with out.open() as handle:
            rows = list(csv.DictReader(handle))
        assert [row["class"] for row in rows] == [names[k] for k in expected]
        assert [Path(row["input"]).name for row in rows] == [
            f"digit-{k:02d}.png" for k in range(24)
        ]
        assert {"class_2", "probability_2"} <= set(rows[0])


def write_idx(path: Path, x: np.ndarray) -> None:
    """(N, H, W) uint8 as an IDX file: magic 00 00 08 03, big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, 3]) + np.asarray(x.shape, ">i4").tobytes()
    path.write_bytes(header + x.astype(np.uint8).tobytes())


def test_predict_on_an_idx_file_gives_the_models_classes(digits_run: Path, tmp_path: Path) -> None:
    x = data.read(runs.read_config(digits_run).data).x_test[:30]
    path = tmp_path / "digits-idx3-ubyte"
    write_idx(path, x[:, 0])
    out = tmp_path / "idx.jsonl"
    result = cli("predict", digits_run, path, "--out", out)
    assert result.exit_code == 0, result.output
    names = bundle_of(digits_run).class_names
    expected = model_logits(digits_run, torch.from_numpy(x)).argmax(1).tolist()
    assert [row["class"] for row in records(out)] == [names[k] for k in expected]
    assert records(out)[2]["input"] == "digits-idx3-ubyte #2"
    write_idx(path, np.zeros((4, 9, 9), np.uint8))
    error_line(cli("predict", digits_run, path), 2, f"{path}: holds 1x9x9 images", "not resized")


def test_a_larger_rgb_image_is_converted_and_resized_with_a_note(
    digits_run: Path, tmp_path: Path
) -> None:
    from PIL import Image

    path = tmp_path / "big\x1b[2J.png"  # a name that would clear the screen
    Image.new("RGB", (32, 32), (9, 9, 9)).save(path)
    result = cli("predict", digits_run, path)
    assert result.exit_code == 0, result.output
    assert "note: 1 of 1 images resized to 8x8, the size the run trained on" in result.stderr
    assert "big\\x1b[2J.png" in result.stdout and "\x1b" not in result.stdout


def test_predict_on_a_csv_matches_columns_by_name(
    csv_run: Path, iris_csv: Path, tmp_path: Path
) -> None:
    """The training table with its columns in another order: the model's classes on the
    training features, and an accuracy, since the label column is there."""
    with iris_csv.open() as handle:
        table = list(csv.reader(handle))
    header, body = table[0], table[1:]
    order = [4, 2, 0, 3, 1]  # species first, the features shuffled
    shuffled = tmp_path / "shuffled.csv"
    with shuffled.open("w", newline="") as handle:
        csv.writer(handle).writerows([[row[k] for k in order] for row in [header, *body]])
    out = tmp_path / "iris.jsonl"
    result = cli("predict", csv_run, shuffled, "--out", out)
    assert result.exit_code == 0, result.output
    rows = records(out)
    x = torch.tensor([[float(v) for v in row[:4]] for row in body])
    expected = model_logits(csv_run, x).argmax(1).tolist()
    names = bundle_of(csv_run).class_names
    assert [row["class"] for row in rows] == [names[k] for k in expected]
    assert rows[0]["input"] == "line 2" and rows[0]["label"] == body[0][4]
    correct = sum(row["class"] == row["label"] for row in rows)
    assert f"accuracy {correct / len(rows):.2%} ({correct} of 150)" in result.stdout

    features_only = tmp_path / "features.csv"
    features_only.write_text(",".join(header[:4]) + "\n" + ",".join(body[0][:4]) + "\n")
    result = cli("predict", csv_run, features_only)
    assert result.exit_code == 0, result.output
    assert "line 2" in result.stdout and "accuracy" not in result.stdout


def test_a_regression_predicts_values_in_the_targets_units(regression_run: Path) -> None:
    out = regression_run.parent / "values.jsonl"
    result = cli("predict", regression_run, "test", "--out", out)
    assert result.exit_code == 0, result.output
    rows = records(out)
    bundle = bundle_of(regression_run)
    assert bundle.task.regression
    x = torch.from_numpy(data.read(runs.read_config(regression_run).data).x_test)
    expected = model_logits(regression_run, x) * bundle.task.target_std + bundle.target_mean
    got = torch.tensor([[row["values"]["y"]] for row in rows], dtype=torch.float64)
    assert torch.allclose(got, expected.double(), rtol=1e-5, atol=1e-5)
    assert 5 < float(got.mean()) < 15  # in the target's units, not standardised
    rmse = evaluate(regression_run, "test", "best")["rmse"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RMSE "))
    assert float(line.split()[1]) == pytest.approx(rmse, rel=1e-4)
    error_line(cli("predict", regression_run, "test", "--top-k", "2"), 2, "is a regression")


def test_a_checkpoint_without_inference_data_reads_the_training_data_again(
    digits_run: Path, tmp_path: Path
) -> None:
    old = tmp_path / digits_run.name
    shutil.copytree(digits_run, old)
    best = runs.checkpoint_path(old, "best")
    state = torch.load(best, weights_only=True)
    del state["data"]
    torch.save(state, best)
    out = tmp_path / "old.jsonl"
    result = cli("predict", old, "test", "--out", out)
    assert result.exit_code == 0, result.output
    assert "keeps no inference data" in result.stderr
    assert "computed again from the run's training data" in result.stderr
    assert records(out) == records_of(digits_run, tmp_path)


def records_of(run_dir: Path, tmp_path: Path) -> list[dict]:
    out = tmp_path / "new.jsonl"
    assert cli("predict", run_dir, "test", "--out", out).exit_code == 0
    return records(out)


# --- bad input ---------------------------------------------------------------------------------


def test_a_damaged_inference_entry_is_named(digits_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / digits_run.name
    shutil.copytree(digits_run, copy)
    best = runs.checkpoint_path(copy, "best")
    state = torch.load(best, weights_only=True)
    state["data"]["std"] = torch.zeros_like(state["data"]["std"])
    torch.save(state, best)
    for command in (["predict", copy, "test"], ["export", copy, "--format", "torchscript"]):
        error_line(cli(*command), 2, f"{best}: inference data (std): not all finite positive")
    assert not (copy / "export").exists()


def damaged_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    best = runs.checkpoint_path(copy, "best")
    best.write_bytes(best.read_bytes()[:3000])
    return copy


def config_only(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "young"
    copy.mkdir()
    shutil.copy(run_dir / runs.CONFIG, copy / runs.CONFIG)
    return copy


# case -> (arguments after predict (RUN: the run, TMP: a temporary folder), error fragments)
BAD_PREDICTIONS: dict[str, tuple[list[str], list[str]]] = {
    "missing run folder": (["TMP/nowhere", "test"], ["TMP/nowhere: not a run folder"]),
    "no checkpoint": (["YOUNG", "test"], ["best.pt: checkpoint missing"]),
    "damaged checkpoint": (["DAMAGED", "test"], ["best.pt: damaged"]),
    "no inputs matched": (["RUN", "TMP/*.jpg"], ["TMP/*.jpg: matches nothing"]),
    "missing file": (["RUN", "TMP/none.png"], ["TMP/none.png: no such file or folder"]),
    "unreadable image": (["RUN", "TMP/bad.png"], ["TMP/bad.png: cannot be read", "not an image"]),
    "a folder of no images": (["RUN", "TMP/empty"], ["TMP/empty: holds no images"]),
    "a table for an image run": (["RUN", "TMP/rows.csv"], ["rows.csv: is a table"]),
    "an unknown kind": (["RUN", "TMP/notes.txt"], ["notes.txt: is of no kind predict reads"]),
    "top-k 0": (["RUN", "test", "--top-k", "0"], ["--top-k: 0: must be from 1 to the run's 10"]),
    "top-k too many": (["RUN", "test", "--top-k", "11"], ["--top-k: 11: must be from 1"]),
    "batch size 0": (["RUN", "test", "--batch-size", "0"], ["--batch-size: 0: must be 1 or more"]),
    "out in a missing folder": (
        ["RUN", "test", "--out", "TMP/no/p.csv"],
        ["--out: TMP/no/p.csv: no folder TMP/no to write into"],
    ),
    "out onto a folder": (
        ["RUN", "test", "--out", "TMP/taken.csv"],
        ["--out: TMP/taken.csv: it exists and is a folder"],
    ),
    "out of an unknown kind": (
        ["RUN", "test", "--out", "TMP/p.txt"],
        ["must end in .csv or .jsonl"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_bad_predict_input_is_one_line_and_writes_nothing(
    case: str, digits_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "taken.csv").mkdir()
    places = {
        "RUN": str(digits_run),
        "TMP": str(tmp_path),
        "YOUNG": str(config_only(digits_run, tmp_path)),
        "DAMAGED": str(damaged_copy(digits_run, tmp_path)),
    }
    args, fragments = BAD_PREDICTIONS[case]

    def placed(text: str) -> str:
        for name, value in places.items():
            text = text.replace(name, value)
        return text

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    error_line(cli("predict", *map(placed, args)), 2, *map(placed, fragments))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ("sepal length (cm),x\n1,2\n", ["line 1 (the header): no column 'sepal width (cm)'"]),
        (None, ["line 1 (the header): column 'extra' is not one the run trained on"]),
        ("HEADER\n5.1,3.5,1.4,0.2,tulip\n", ["line 2, column 'species': class 'tulip' is not one"]),
        ("HEADER\n5.1,3.5,oops,0.2,setosa\n", ["line 2, column 'petal length (cm)': not a number"]),
    ],
)
def test_wrong_csv_columns_and_cells_are_named(
    csv_run: Path, iris_csv: Path, tmp_path: Path, rows: str | None, fragments: list[str]
) -> None:
    header = iris_csv.read_text().splitlines()[0]
    if rows is None:
        rows = f"{header},extra\n5.1,3.5,1.4,0.2,setosa,7\n"
    path = tmp_path / "new.csv"
    path.write_text(rows.replace("HEADER", header))
    error_line(cli("predict", csv_run, path), 2, f"{path}: ", *fragments)


# --- export ----------------------------------------------------------------------------------


def test_safetensors_export_loads_without_pickle_to_identical_logits(
    digits_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("safetensors", reason="the export extra (safetensors) is missing")
    out = tmp_path / "digits.safetensors"
    result = cli("export", digits_run, "--format", "safetensors", "--out", out)
    assert result.exit_code == 0, result.output
    assert "max abs difference 0" in result.stdout
    info = json.loads((tmp_path / "digits.json").read_text())
    assert info["model"]["name"] == "kan" and info["inference"]["class_names"][3] == "3"
    bundle = bundle_of(digits_run)
    x = bundle.normalize(bundle._split("test")[0])
    original = trained.load(digits_run, "best", device=torch.device("cpu")).model
    with torch.no_grad():
        assert torch.equal(models.load(out)(x), original(x))


def test_safetensors_export_refuses_weights_it_does_not_describe(
    digits_run: Path, tmp_path: Path
) -> None:
    pytest.importorskip("safetensors", reason="the export extra (safetensors) is missing")
    out = tmp_path / "model.safetensors"
    assert cli("export", digits_run, "--format", "safetensors", "--out", out).exit_code == 0
    out.write_bytes(out.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ConfigError, match="SHA-256 is not the one model.json records"):
        models.load(out)


def reference_outputs(run_dir: Path) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(normalised test inputs, the PyTorch model's logits on them, the test labels)."""
    bundle = bundle_of(run_dir)
    x, y = bundle._split("test")
    x = bundle.normalize(x)
    model = trained.load(run_dir, "best", device=torch.device("cpu")).model
    with torch.no_grad():
        return x.numpy(), model(x), y


def test_onnx_export_matches_the_model_on_the_test_split(digits_run: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is missing")
    pytest.importorskip("onnxscript", reason="the export extra (onnxscript) is missing")
    result = cli("export", digits_run, "--format", "onnx")
    assert result.exit_code == 0, result.output
    path = digits_run / "export" / "model.onnx"
    assert "checked with onnxruntime" in result.stdout and str(path) in result.stdout
    x, logits, y = reference_outputs(digits_run)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})
    got = torch.from_numpy(got)
    assert float((got - logits).abs().max()) < 1e-4  # measured: about 4e-6
    assert int((got.argmax(1) == y).sum()) == int((logits.argmax(1) == y).sum())
    meta = json.loads(session.get_modelmeta().custom_metadata_map["kan_tui"])
    assert meta["inference"]["input_shape"] == [1, 8, 8] and len(meta["inference"]["mean"]) == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_the_model_on_the_test_split(
    digits_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model.pt"
    result = cli("export", digits_run, "--format", "torchscript", "--out", out)
    assert result.exit_code == 0, result.output
    x, logits, y = reference_outputs(digits_run)
    extra = {"kan_tui.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x))
    assert float((got - logits).abs().max()) < 1e-4
    assert int((got.argmax(1) == y).sum()) == int((logits.argmax(1) == y).sum())
    assert json.loads(extra["kan_tui.json"])["model"]["num_classes"] == 10


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--format", "onnx", "--out", "TMP/no/m.onnx"], ["--out: TMP/no/m.onnx: no folder"]),
        (["--format", "safetensors", "--out", "TMP/m.onnx"], ["must end in .safetensors"]),
        (["--format", "torchscript", "--out", "TMP"], ["--out: TMP: it exists and is a folder"]),
    ],
)
def test_bad_export_output_is_one_line(
    digits_run: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    placed = [arg.replace("TMP", str(tmp_path)) for arg in args]
    result = cli("export", digits_run, *placed)
    error_line(result, 2, *(f.replace("TMP", str(tmp_path)) for f in fragments))
    assert not list(tmp_path.iterdir())

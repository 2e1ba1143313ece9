"""What `predict` and `export` read back from files that may be someone else's: a checkpoint's
inference data (`inference_meta.parse`) and a safetensors export's JSON (`models.load`).

Each damaged or hostile field must be one error naming the file and the field, never a
traceback or a model built from absurd numbers; good files round-trip exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kan_engine import inference_meta, models, portable
from kan_engine.errors import ConfigError, RunDirError
from kan_engine.inference_meta import InferenceMeta

pytest.importorskip("safetensors", reason="the export extra (safetensors) is missing")

META = InferenceMeta(
    input_shape=(3,),
    class_names=["a", "b"],
    mean=torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64),
    std=torch.tensor([1.0, 2.0, 0.25], dtype=torch.float64),
    feature_names=["x", "y", "z"],
    label_column="label",
)
ARGS = {
    "name": "kan",
    "input_shape": [3],
    "num_classes": 2,
    "options": {"grid_size": 4, "spline_order": 3, "grid_range": [-1.0, 1.0]},
    "dtype": "float32",
}


def same(a: InferenceMeta, b: InferenceMeta) -> bool:
    return a.to_json() == b.to_json()


def test_the_entry_round_trips_as_tensors_and_as_json() -> None:
    assert same(inference_meta.parse(META.to_state(), "ckpt"), META)
    assert same(inference_meta.parse(json.loads(json.dumps(META.to_json())), "json"), META)


def test_regression_values_are_put_back_in_the_targets_units() -> None:
    meta = InferenceMeta(
        input_shape=(1,),
        class_names=["price"],
        mean=torch.zeros(1, dtype=torch.float64),
        std=torch.ones(1, dtype=torch.float64),
        task="regression",
        target_mean=torch.tensor([100.0], dtype=torch.float64),
        target_std=torch.tensor([20.0], dtype=torch.float64),
    )
    assert same(inference_meta.parse(meta.to_state(), "ckpt"), meta)
    assert meta.values(torch.tensor([[0.0], [1.5]])).tolist() == [[100.0], [130.0]]


# field -> (its damaged value, a fragment of the one error line)
DAMAGED: dict[str, tuple[Any, str]] = {
    "input_shape": ([3, 0], "(input_shape): not (C, H, W) or (F,) sizes"),
    "class_names": (["a"], "(class_names): 1 names for a classification"),
    "task": ("ranking", "(task): 'ranking' is not one of classification, regression"),
    "mean": ([0.0, 1.0], "(mean): (2,) values, expected (3,)"),
    "std": ([1.0, 0.0, 1.0], "(std): not all finite positive numbers"),
    "target_mean": ([1.0, 2.0], "(target_mean): target statistics for a classification"),
    "feature_names": (["x", "y"], "(feature_names): 2 names for inputs of"),
    "label_column": (7, "(label_column): not a name"),
}


@pytest.mark.parametrize("field", list(DAMAGED))
def test_a_damaged_field_is_one_error_naming_it(field: str) -> None:
    value, fragment = DAMAGED[field]
    entry = {**META.to_json(), field: value}
    with pytest.raises(RunDirError, match="^best.pt: inference data ") as caught:
        inference_meta.parse(entry, "best.pt")
    assert fragment in str(caught.value)


def export(tmp_path: Path, args: dict[str, Any] = ARGS) -> Path:
    """A real safetensors export of a freshly built model, as `kan-tui export` writes it."""
    path = tmp_path / "model.safetensors"
    portable.write(path, models.build_from(args), args, {"inference": META.to_json()})
    return path


def test_an_export_loads_to_the_same_module_without_pickle(tmp_path: Path) -> None:
    path = export(tmp_path)
    model = models.load(path)
    reference = models.build_from(ARGS)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(5, 3)
    assert not model.training
    assert torch.equal(model(x), reference.eval()(x))
    assert torch.equal(models.load(tmp_path / "model.json")(x), model(x))


def rewrite(path: Path, **changes: Any) -> None:
    info = json.loads(path.read_text())
    for key, value in changes.items():
        target = info
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    path.write_text(json.dumps(info))


# a change to the JSON -> a fragment of the error
HOSTILE_JSON: dict[str, tuple[dict[str, Any], str]] = {
    "foreign format": ({"format": "pytorch"}, "model.json: format: not a kan-tui export"),
    "newer version": ({"version": 9}, "model.json: version: 9: this kan-tui reads version 1"),
    "unknown model": ({"model.name": "evil"}, "model.json: model.name: unknown model 'evil'"),
    "huge grid": ({"model.options.grid_size": 10**9}, "model.json: model.options: grid_size"),
    "absurd input": ({"model.input_shape": [1 << 30]}, "model.json: model.input_shape: not"),
    "other outputs": ({"model.num_classes": 5}, "does not fit the model of"),
    "unknown dtype": ({"model.dtype": "int8"}, "model.json: model.dtype: dtype"),
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_a_hostile_export_json_is_one_error_naming_the_file(case: str, tmp_path: Path) -> None:
    path = export(tmp_path)
    changes, fragment = HOSTILE_JSON[case]
    rewrite(tmp_path / "model.json", **changes)
    with pytest.raises(ConfigError) as caught:
        models.load(path)
    assert fragment in str(caught.value)


def test_weights_that_are_not_safetensors_are_refused(tmp_path: Path) -> None:
    path = export(tmp_path)
    path.write_bytes(b"\x10" + bytes(15))
    rewrite(tmp_path / "model.json", sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(ConfigError, match="model.safetensors: not safetensors weights"):
        models.load(path)


def test_a_missing_json_is_named(tmp_path: Path) -> None:
    path = export(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(ConfigError, match="model.json: file not found"):
        models.load(path)

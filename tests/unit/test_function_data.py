"""Function data: shapes, the box, fixed points, noise on training targets only, names, errors."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from kan_engine.config import DataSection
from kan_engine.errors import ConfigError, DataError
from kan_engine.expression import EXAMPLE, parse
from kan_engine.function_data import NAMED, describe_named, load_function

pytestmark = pytest.mark.filterwarnings("error")


def section(function: str | None, **fields: object) -> DataSection:
    return DataSection(dataset="function", function=function, **fields)


def inside(x: np.ndarray, box: tuple[float, float]) -> bool:
    """Within the box as float32 holds it (float32(pi) is a little more than pi)."""
    return bool(((x >= np.float32(box[0])) & (x <= np.float32(box[1]))).all())


def test_shapes_dtypes_and_what_the_trainer_reads() -> None:
    raw = load_function(section("kan_exp_sin2", function_train=300, function_test=70))
    assert raw.x_train.shape == (300, 2) and raw.x_train.dtype == np.float32
    assert raw.y_train.shape == (300, 1) and raw.y_train.dtype == np.float32
    assert raw.x_test.shape == (70, 2) and raw.x_test.dtype == np.float32
    assert raw.y_test.shape == (70, 1) and raw.y_test.dtype == np.float32
    assert raw.task == "regression" and raw.class_names == ["y"] and raw.warnings == []
    assert raw.source == "function kan_exp_sin2: exp(sin(pi*x1) + x2**2) on [-1, 1]^2"


def test_targets_are_the_function_of_the_inputs_the_model_sees() -> None:
    raw = load_function(section("exp(sin(pi*x1) + x2**2)", function_train=500))
    x = raw.x_train.astype(np.float64)  # the float32 points, not the draws before rounding
    expected = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
    np.testing.assert_allclose(raw.y_train[:, 0], expected, rtol=1e-6)
    x = raw.x_test.astype(np.float64)
    expected = np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)
    np.testing.assert_allclose(raw.y_test[:, 0], expected, rtol=1e-6)


def test_a_formula_is_sampled_in_function_range_and_fills_it() -> None:
    raw = load_function(section("x1 + x3", function_range=(2.0, 3.0), function_train=2000))
    assert raw.x_train.shape == (2000, 3)  # x2 unused: the inputs go up to the highest index
    for x in (raw.x_train, raw.x_test):
        assert inside(x, (2.0, 3.0))
        assert x.min() < 2.01 and x.max() > 2.99
    # uniform: each input's mean near the middle, its columns not copies of each other
    np.testing.assert_allclose(raw.x_train.mean(axis=0), 2.5, atol=0.03)
    assert abs(np.corrcoef(raw.x_train.T)[0, 1]) < 0.1


def test_a_named_function_uses_its_own_box_not_function_range() -> None:
    raw = load_function(section("feynman_i_6_2", function_range=(-1.0, 1.0)))
    assert inside(raw.x_train, NAMED["feynman_i_6_2"].box) and raw.x_train.min() > 0.49
    assert raw.source.endswith("on [0.5, 2]^2")


def test_the_same_points_every_time_whatever_the_global_seeds() -> None:
    import torch

    fields = {"function_train": 400, "function_test": 100}
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    first = load_function(section("x1*x2", **fields))
    np.random.seed(2)
    random.seed(2)
    torch.manual_seed(2)
    np.random.random(10)
    second = load_function(section("x1*x2", **fields))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert not np.array_equal(first.x_train[:100], first.x_test)  # separate streams


def test_training_points_do_not_depend_on_the_test_size_or_the_noise() -> None:
    base = load_function(section("x1*x2", function_test=10))
    other = load_function(section("x1*x2", function_test=500, function_noise=0.5))
    np.testing.assert_array_equal(base.x_train, other.x_train)
    np.testing.assert_array_equal(base.x_test, other.x_test[:10])  # the same stream, longer


def test_noise_goes_on_the_training_targets_only() -> None:
    fields = {"function_train": 20_000, "function_test": 300}
    clean = load_function(section("x1*x2", **fields))
    noisy = load_function(section("x1*x2", function_noise=0.1, **fields))
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)
    np.testing.assert_array_equal(clean.x_test, noisy.x_test)
    np.testing.assert_array_equal(clean.y_test, noisy.y_test)
    residual = (noisy.y_train - clean.y_train)[:, 0]
    assert 0.095 < residual.std() < 0.105 and abs(residual.mean()) < 0.005
    assert noisy.y_train.dtype == np.float32


def test_a_name_and_its_formula_on_its_box_give_the_same_data() -> None:
    named = NAMED["kan_exp_sin4"]
    by_name = load_function(section(" kan_exp_sin4 "))
    by_text = load_function(section(named.text, function_range=named.box))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(by_name, name), getattr(by_text, name))


def test_non_finite_values_are_refused_with_the_function_the_box_and_a_fix() -> None:
    with pytest.raises(DataError) as caught:
        load_function(section("log(x1)"))
    error = caught.value
    assert error.source == "function log(x1) on [-1, 1]^1"
    assert re.search(r"is nan at x = \(-?0\.\d+\) \(\d+ of 1000 sampled points\)", error.reason)
    assert "data.function_range" in error.fix
    assert load_function(section("log(x1)", function_range=(0.5, 2.0))).y_train.min() > -0.7
    with pytest.raises(DataError, match="is nan"):
        load_function(section("sqrt(x1 - 2)", function_train=4, function_test=1))
    with pytest.raises(DataError, match="is inf"):
        load_function(section("exp(1000*x1)", function_range=(1.0, 2.0)))
    with pytest.raises(DataError, match=r"is \d\.\d+e\+\d+ \(beyond float32\)"):
        load_function(section("exp(100*x1)", function_range=(0.9, 1.0)))  # finite in float64


def test_a_missing_function_is_refused_with_an_example() -> None:
    with pytest.raises(ConfigError) as caught:
        load_function(section(None))
    assert caught.value.key == "data.function"
    assert "--dataset function" in caught.value.reason and EXAMPLE in caught.value.reason


def test_an_unknown_name_lists_the_named_functions() -> None:
    with pytest.raises(ConfigError) as caught:
        load_function(section("foo"))
    assert caught.value.key == "data.function"
    assert "foo is neither a named function nor a formula" in caught.value.reason
    assert all(name in caught.value.reason for name in NAMED)
    with pytest.raises(ConfigError, match="did you mean feynman_i_6_2b?"):
        load_function(section("feynman_I.6.2b"))


def test_a_formula_that_is_refused_keeps_its_own_reason() -> None:
    for text, reason in (("x1.real", "attribute access (.real)"), ("x1 +", "invalid syntax")):
        with pytest.raises(ConfigError) as caught:
            load_function(section(text))
        assert reason in caught.value.reason and "kan_exp_sin2" not in caught.value.reason


def test_a_formula_without_inputs_is_refused() -> None:
    with pytest.raises(ConfigError, match="uses no input"):
        load_function(section("2 + pi"))


def test_the_source_shows_user_text_harmlessly() -> None:
    raw = load_function(section("x1 +\n x2", function_train=4, function_test=1))
    assert raw.source == "function x1 +\\n x2 on [-1, 1]^2"


@pytest.mark.parametrize("name", list(NAMED))
def test_every_named_function_loads_and_is_finite_on_its_box(name: str) -> None:
    function = NAMED[name]
    assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
    low, high = function.box
    assert np.isfinite(low) and np.isfinite(high) and low < high
    assert function.description and "\n" not in function.description
    raw = load_function(section(name, function_train=20_000, function_test=2000))
    assert raw.x_train.shape[1] == parse(function.text).arity
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        assert inside(x, function.box)
        assert np.isfinite(y).all()
    assert raw.y_train.std() > 1e-3  # a function of its inputs, not a constant


def test_describe_named_lists_every_function_with_its_formula_and_box() -> None:
    listing = describe_named()
    assert [name for name, _ in listing] == list(NAMED)
    for name, line in listing:
        assert NAMED[name].text in line and "\n" not in line
    assert dict(listing)["feynman_i_12_11"].endswith("on [-3.14159, 3.14159]")

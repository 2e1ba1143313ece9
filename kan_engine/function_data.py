"""Function fitting, as in the KAN paper: samples of a formula on a box, as a regression data set.

`--dataset function --set data.function=NAME_OR_FORMULA`: a name from `NAMED` (the paper's toy
functions and dimensionless Feynman equations, each with the box it is finite on), or a formula
in x1, x2, ... read by `kan_engine.expression` and sampled in `data.function_range`.

The points are drawn with the fixed `SPLIT_SEED`, from separate streams for the training inputs,
the test inputs and the noise, so that runs with different training seeds (and different test
sizes or noise) are compared on the same points. Noise goes on the training targets only: the
test split measures how close the fit is to the function itself.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import numpy as np

from kan_engine.config import DataSection
from kan_engine.datasets import Raw
from kan_engine.errors import ConfigError, DataError
from kan_engine.expression import EXAMPLE, Expression, parse
from kan_engine.names import SPLIT_SEED
from kan_engine.untrusted import printable, short

KEY = "data.function"
_PI = math.pi


@dataclass(frozen=True)
class NamedFunction:
    text: str  # the formula, in x1, x2, ...
    description: str  # one line
    box: tuple[float, float]  # every input is sampled uniformly in [low, high]


# The KAN paper's toy functions, then Feynman equations in the dimensionless form the paper fits
# (Feynman_no_units). Each has one box for all its inputs, ours, chosen where it is finite (no
# zero denominator, no sqrt or log of a negative, no arcsin beyond 1) and, for angles, spanning
# a period. Left out: those that need special functions (Bessel, ...) and the paper's 100-input
# exp(mean of sin(pi*x_i/2)**2), longer written out than a formula may be.
NAMED: dict[str, NamedFunction] = {
    "kan_exp_sin2": NamedFunction(
        "exp(sin(pi*x1) + x2**2)", "KAN paper toy function, a [2, 1, 1] KAN", (-1.0, 1.0)
    ),
    "kan_product": NamedFunction("x1*x2", "KAN paper toy function: multiplication", (-1.0, 1.0)),
    "kan_division": NamedFunction(
        "x1/x2", "KAN paper toy function: division of positives", (0.5, 2.0)
    ),
    "kan_exp_sin4": NamedFunction(
        "exp(sin(x1**2 + x2**2) + sin(x3**2 + x4**2))",
        "KAN paper toy function, a [4, 2, 1, 1] KAN",
        (-1.0, 1.0),
    ),
    "kan_exp_sin_pi4": NamedFunction(
        "exp((sin(pi*(x1**2 + x2**2)) + sin(pi*(x3**2 + x4**2)))/2)",
        "KAN paper toy function, a [4, 4, 2, 1] KAN",
        (-1.0, 1.0),
    ),
    "kan_phase_transition": NamedFunction(
        "tanh(5*(x1**4 + x2**4 + x3**4 - 1))",
        "KAN paper toy function: a phase transition",
        (-1.0, 1.0),
    ),
    "kan_distance": NamedFunction(
        "sqrt((x1 - x2)**2 + (x3 - x4)**2)",
        "KAN paper toy function: a deeper composition",
        (-1.0, 1.0),
    ),
    "feynman_i_6_2": NamedFunction(
        "exp(-(x1/x2)**2/2)/sqrt(2*pi)/x2", "Feynman I.6.2: Gaussian, x1 = θ, x2 = σ", (0.5, 2.0)
    ),
    "feynman_i_6_2b": NamedFunction(
        "exp(-((x1 - x2)/x3)**2/2)/sqrt(2*pi)/x3",
        "Feynman I.6.2b: Gaussian, x1 = θ, x2 = θ1, x3 = σ",
        (0.5, 2.0),
    ),
    "feynman_i_9_18": NamedFunction(
        "x1/((x2 - 1)**2 + (x3 - x4)**2 + (x5 - x6)**2)",
        "Feynman I.9.18: gravitation, by the first distance",
        (1.5, 2.0),
    ),
    "feynman_i_12_11": NamedFunction(
        "1 + x1*sin(x2)", "Feynman I.12.11: Lorentz force, x2 = θ", (-_PI, _PI)
    ),
    "feynman_i_13_12": NamedFunction(
        "x1*(1/x2 - 1)", "Feynman I.13.12: potential energy, x2 = r2/r1", (0.5, 2.0)
    ),
    "feynman_i_15_3x": NamedFunction(
        "(1 - x1)/sqrt(1 - x2**2)", "Feynman I.15.3x: Lorentz transformation", (-0.9, 0.9)
    ),
    "feynman_i_16_6": NamedFunction(
        "(x1 + x2)/(1 + x1*x2)", "Feynman I.16.6: relativistic addition of speeds", (-0.9, 0.9)
    ),
    "feynman_i_18_4": NamedFunction(
        "(1 + x1*x2)/(1 + x1)", "Feynman I.18.4: centre of mass", (0.5, 2.0)
    ),
    "feynman_i_26_2": NamedFunction(
        "arcsin(x1*sin(x2))", "Feynman I.26.2: refraction, x2 = θ2", (-1.0, 1.0)
    ),
    "feynman_i_27_6": NamedFunction("1/(1 + x1*x2)", "Feynman I.27.6: thin lens", (0.0, 1.0)),
    "feynman_i_29_16": NamedFunction(
        "sqrt(1 + x1**2 - 2*x1*cos(x2 - x3))", "Feynman I.29.16: law of cosines", (-_PI, _PI)
    ),
    "feynman_i_30_3": NamedFunction(
        "sin(x1*x2/2)**2/sin(x2/2)**2",
        "Feynman I.30.3: N-slit interference, x2 = θ",
        (0.4 * _PI, 1.6 * _PI),
    ),
    "feynman_i_37_4": NamedFunction(
        "1 + x1 + 2*sqrt(x1)*cos(x2)", "Feynman I.37.4: interference of two waves", (0.0, 2 * _PI)
    ),
    "feynman_i_40_1": NamedFunction(
        "x1*exp(-x2)", "Feynman I.40.1: barometric formula", (-1.0, 1.0)
    ),
    "feynman_i_44_4": NamedFunction(
        "x1*log(x2)", "Feynman I.44.4: isothermal work, x2 = V2/V1", (0.5, 2.0)
    ),
    "feynman_i_50_26": NamedFunction(
        "cos(x1) + x2*cos(x1)**2", "Feynman I.50.26: anharmonic oscillator", (-_PI, _PI)
    ),
    "feynman_ii_2_42": NamedFunction("(x1 - 1)*x2", "Feynman II.2.42: heat flow", (-1.0, 1.0)),
    "feynman_ii_11_27": NamedFunction(
        "x1*x2/(1 - x1*x2/3)", "Feynman II.11.27: Clausius-Mossotti", (-1.0, 1.0)
    ),
    "feynman_ii_35_18": NamedFunction(
        "x1/(exp(x2) + exp(-x2))", "Feynman II.35.18: two-level occupation", (-1.0, 1.0)
    ),
    "feynman_ii_36_38": NamedFunction("x1 + x2*x3", "Feynman II.36.38: magnetisation", (-1.0, 1.0)),
    "feynman_iii_9_52": NamedFunction(
        "x1*sin((x2 - x3)/2)**2/((x2 - x3)/2)**2",
        "Feynman III.9.52: transition probability",
        (-_PI, _PI),
    ),
    "feynman_iii_10_19": NamedFunction(
        "sqrt(1 + x1**2 + x2**2)", "Feynman III.10.19: magnetic moment energy", (-1.0, 1.0)
    ),
}
# what a mistyped name looks like (feynman_I.6.2b); not x1.real, whose refusal says more
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[0-9]+[a-z]?)*")


def _interval(box: tuple[float, float]) -> str:
    return f"[{box[0]:.6g}, {box[1]:.6g}]"


def describe_named() -> list[tuple[str, str]]:
    """(name, one line) of every named function, for `kan-tui datasets` and the form."""
    return [
        (name, f"{fn.description}: {fn.text} on {_interval(fn.box)}") for name, fn in NAMED.items()
    ]


@dataclass(frozen=True)
class _Target:
    label: str  # how the data set's source names it
    expression: Expression
    box: tuple[float, float]
    fix: str  # what to do when it is not finite on the box


def _resolve(section: DataSection) -> _Target:
    """What `data.function` names: a named function wins over a formula of the same text."""
    if section.function is None:
        reason = (
            "--dataset function needs one: a name (kan-tui datasets lists them) or a formula, "
            f'e.g. --set data.function="{EXAMPLE}"'
        )
        raise ConfigError("", KEY, reason)
    text = section.function.strip()
    named = NAMED.get(text)
    if named is not None:
        fix = "this named function's box is wrong: please report it"
        return _Target(f"{text}: {named.text}", parse(named.text, key=KEY), named.box, fix)
    try:
        expression = parse(text, key=KEY)
    except ConfigError:
        if not _NAME.fullmatch(text):
            raise
        close = difflib.get_close_matches(text.lower().replace(".", "_"), NAMED, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        reason = (
            f"{short(text, 40)} is neither a named function nor a formula in x1, x2, ...; "
            f"{hint}named: {', '.join(NAMED)}"
        )
        raise ConfigError("", KEY, reason) from None
    if expression.arity == 0:
        raise ConfigError("", KEY, f"{short(text)} uses no input: write it in x1, x2, ...")
    fix = "sample where it is finite, e.g. --set data.function_range=[0.5,2]"
    return _Target(expression.text, expression, section.function_range, fix)


def _sample(rng: np.random.Generator, n: int, arity: int, box: tuple[float, float]) -> np.ndarray:
    """(n, arity) float32 uniform in the box, drawn in float32 (ten million rows of a hundred
    inputs are 4 GB, not 8) and clipped, so that rounding never steps outside the box (a point
    at 1.0000001 would make sqrt(1 - x1**2) nan)."""
    low, high = np.float32(box[0]), np.float32(box[1])
    x = rng.random((n, arity), dtype=np.float32)
    x *= high - low
    x += low
    return np.clip(x, low, high, out=x)


def _targets(expression: Expression, x: np.ndarray, source: str, fix: str) -> np.ndarray:
    """f(x) as (N, 1) float64, computed from the float32 inputs the model will see; DataError
    with the first bad point when it is not finite, in float64 or once stored as float32."""
    y = expression(x)  # (N,)
    with np.errstate(over="ignore"):  # a value past float32 becomes inf: that is the check
        bad = ~np.isfinite(y.astype(np.float32))
    if bad.any():
        at = int(np.argmax(bad))
        value = f"{y[at]:.4g} (beyond float32)" if np.isfinite(y[at]) else str(y[at])
        point = ", ".join(f"{v:.4g}" for v in x[at])
        reason = f"is {value} at x = ({point}) ({int(bad.sum())} of {len(y)} sampled points)"
        raise DataError(source, reason, fix=fix)
    return y[:, None]


def load_function(section: DataSection) -> Raw:
    """Training and test samples of `section.function` as a regression `Raw` (target "y")."""
    target = _resolve(section)
    expression, box = target.expression, target.box
    source = printable(f"function {target.label} on {_interval(box)}^{expression.arity}")
    train_rng, test_rng, noise_rng = (
        np.random.default_rng(seed) for seed in np.random.SeedSequence(SPLIT_SEED).spawn(3)
    )
    x_train = _sample(train_rng, section.function_train, expression.arity, box)
    x_test = _sample(test_rng, section.function_test, expression.arity, box)
    y_train = _targets(expression, x_train, source, target.fix)  # (N, 1)
    y_test = _targets(expression, x_test, source, target.fix)
    if section.function_noise > 0:
        y_train = y_train + noise_rng.normal(0.0, section.function_noise, y_train.shape)
    return Raw(
        x_train,
        y_train.astype(np.float32),
        x_test,
        y_test.astype(np.float32),
        class_names=["y"],
        source=source,
        task="regression",
    )

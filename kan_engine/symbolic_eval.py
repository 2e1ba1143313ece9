"""A formula's own values, and how well they predict: the honest half of symbolic formulas.

A formula read off a KAN often predicts worse than the network it came from (each edge is only
approximately its function, and errors compound through the layers). So the formula is scored by
evaluating *it*, never the network: `evaluate` walks the sympy tree itself into numpy operations
(Add, Mul, Pow, numbers, symbols and the functions the library can produce). Nothing is passed
to `lambdify` or `eval`, so a formula, wherever it came from, can only ever compute arithmetic;
any other node is refused with a SymbolicError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from kan_engine.errors import SymbolicError
from kan_engine.symbolic_library import sympy_module

__all__ = ["check", "evaluate", "regression_metrics"]


@cache
def _functions() -> dict[type, Callable[[np.ndarray], np.ndarray]]:
    """The sympy function classes a library formula can contain (cos: sympy may rewrite a sin
    whose phase is an exact multiple of pi/2), each with its numpy twin."""
    sp = sympy_module()
    return {
        sp.exp: np.exp,
        sp.log: np.log,
        sp.sin: np.sin,
        sp.cos: np.cos,
        sp.tanh: np.tanh,
        sp.atan: np.arctan,
        sp.Abs: np.abs,
    }


def _walk(expr: Any, known: dict[Any, np.ndarray], n: int) -> np.ndarray:
    """expr's values (n,); `known` maps each variable to its values and, as the walk goes, every
    subexpression met to its values: a composed formula repeats each hidden node in every edge
    leaving it, and is so evaluated once per distinct subtree."""
    if expr not in known:
        known[expr] = _node(expr, known, n)
    return known[expr]


def _node(expr: Any, known: dict[Any, np.ndarray], n: int) -> np.ndarray:
    sp = sympy_module()
    if isinstance(expr, sp.Symbol):
        raise SymbolicError(f"the formula uses {expr}, which is not a variable")
    if isinstance(expr, (sp.Number, sp.NumberSymbol)):
        if not expr.is_real:  # oo, zoo, nan: no real number to compute with
            raise SymbolicError(f"the formula holds {expr}, which is not a finite real number")
        return np.full(n, float(expr))
    if isinstance(expr, sp.Add):
        return np.sum([_walk(arg, known, n) for arg in expr.args], axis=0)
    if isinstance(expr, sp.Mul):
        return np.prod([_walk(arg, known, n) for arg in expr.args], axis=0)
    if isinstance(expr, sp.Pow):
        base, exponent = expr.args  # a number exponent as a scalar: (-2.0)**3.0 is -8, not NaN
        power = float(exponent) if exponent.is_Number else _walk(exponent, known, n)
        return np.power(_walk(base, known, n), power)
    function = _functions().get(type(expr))
    if function is not None and len(expr.args) == 1:
        return function(_walk(expr.args[0], known, n))
    raise SymbolicError(f"cannot evaluate {type(expr).__name__} ({expr}) in a formula")


def evaluate(expr: Any, variables: Sequence[Any], x: np.ndarray) -> np.ndarray:
    """The formula's values at x (N, n) -> (N,), column k of x being `variables[k]` (a Symbol or
    its name). NaN or inf where the formula leaves its domain (log of a negative number, ...)."""
    sp = sympy_module()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(variables):
        raise ValueError(f"evaluate: x must be (N, {len(variables)}) (got {x.shape})")
    symbols = [v if isinstance(v, sp.Symbol) else sp.Symbol(str(v)) for v in variables]
    known = dict(zip(symbols, x.T, strict=True))
    try:
        tree = sp.sympify(expr, strict=True)  # strict: a string is refused, never parsed (eval)
    except sp.SympifyError:
        raise SymbolicError(f"not a sympy expression: {type(expr).__name__}") from None
    with np.errstate(all="ignore"):
        return np.asarray(_walk(tree, known, x.shape[0]), dtype=np.float64)


def regression_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """rmse, mae and r2 of prediction against target (N,), and how many predictions are not
    finite; with any such prediction the three are NaN (a formula that is undefined somewhere
    on the test set must not look good by leaving those points out)."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    if prediction.shape != target.shape or target.size == 0:
        raise ValueError(
            f"regression_metrics: shapes differ or are empty ({prediction.shape}, {target.shape})"
        )
    nonfinite = int((~np.isfinite(prediction)).sum())
    if nonfinite:
        nan = float("nan")
        return {"rmse": nan, "mae": nan, "r2": nan, "nonfinite": nonfinite}
    error = prediction - target
    total = float(((target - target.mean()) ** 2).sum())
    sse = float(error @ error)
    return {
        "rmse": float(np.sqrt(sse / target.size)),
        "mae": float(np.abs(error).mean()),
        "r2": 1.0 - sse / total if total > 0 else float(sse == 0),
        "nonfinite": 0,
    }


def check(
    formula: Any, x_test: np.ndarray, y_test: np.ndarray, variables: Sequence[Any]
) -> dict[str, float]:
    """rmse, mae, r2 (and `nonfinite`) of the formula's own values at x_test (N, n) against
    y_test (N,); pair them with the network's `regression_metrics` on the same points."""
    return regression_metrics(evaluate(formula, variables, x_test), y_test)

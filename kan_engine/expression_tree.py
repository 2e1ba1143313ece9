"""What a checked formula computes: our own small tree, its values and its SymPy form.

`kan_engine.expression` reads the user's text and builds these nodes only for what its whitelist
lets through; nothing here ever sees Python source. Values come from closures that call NumPy
ufuncs on float64 arrays (literals included, so `1/0` and `10.0**400` give inf as NumPy does
instead of raising); the SymPy form is built from the same nodes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# name -> (NumPy ufunc, SymPy function name)
FUNCTIONS: dict[str, tuple[np.ufunc, str]] = {
    "sin": (np.sin, "sin"), "cos": (np.cos, "cos"), "tan": (np.tan, "tan"),
    "arcsin": (np.arcsin, "asin"), "arccos": (np.arccos, "acos"), "arctan": (np.arctan, "atan"),
    "sinh": (np.sinh, "sinh"), "cosh": (np.cosh, "cosh"), "tanh": (np.tanh, "tanh"),
    "exp": (np.exp, "exp"), "log": (np.log, "log"), "sqrt": (np.sqrt, "sqrt"),
    "abs": (np.abs, "Abs"),
}  # fmt: skip
CONSTANTS: dict[str, float] = {"pi": np.pi, "e": np.e}
_UFUNCS: dict[str, np.ufunc] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power,
    "neg": np.negative, **{name: ufunc for name, (ufunc, _) in FUNCTIONS.items()},
}  # fmt: skip
_OPERATORS: dict[str, Callable[..., Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "**": operator.pow, "neg": operator.neg,
}  # fmt: skip
# rows evaluated at a time: a deep formula keeps one temporary per level alive, and a float32
# table of millions of rows is never copied whole to float64
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Num:
    value: int | float  # as written: an int stays exact for SymPy
    constant: str = ""  # pi or e: SymPy keeps them symbolic


@dataclass(frozen=True)
class Var:
    index: int  # 1-based, as in x1


@dataclass(frozen=True)
class Op:
    name: str  # an operator (+ - * / **), "neg", or a key of FUNCTIONS
    args: tuple[Node, ...]  # one or two


Node = Num | Var | Op
# the inputs, one (n,) float64 array per variable -> (n,) values, or a scalar for a constant
_Compiled = Callable[[Sequence[np.ndarray]], "np.ndarray | np.float64"]


@dataclass(frozen=True)
class Expression:
    """A checked formula (made by `expression.parse`): call it on inputs (N, arity) for (N,)."""

    text: str
    arity: int  # the highest variable index used (x3 alone: 3)
    tree: Node = field(repr=False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Values as float64 (N,); inf and nan are left for the caller to judge, so NumPy's
        warnings about them are silenced here."""
        x = np.asarray(x)  # (N, arity), any real dtype: converted a chunk at a time
        if x.ndim != 2 or x.shape[1] != self.arity:
            raise ValueError(f"{self.text}: needs inputs (N, {self.arity}), got {x.shape}")
        evaluate = _compile(self.tree)
        out = np.empty(len(x))  # (N,)
        with np.errstate(all="ignore"):
            for start in range(0, len(x), _CHUNK):
                columns = x[start : start + _CHUNK].T.astype(np.float64, order="C")  # (arity, n)
                out[start : start + columns.shape[1]] = evaluate(columns)
        return out

    def to_sympy(self) -> Any:
        """The formula as SymPy builds it from our tree, left unevaluated: evaluating `9**9**9`
        would compute an integer of 370 million digits. Call `.doit()` or `simplify` to fold."""
        import sympy

        symbols = [sympy.Symbol(f"x{i}", real=True) for i in range(1, self.arity + 1)]
        with sympy.evaluate(False):
            return _to_sympy(self.tree, sympy, symbols)


def _compile(node: Node) -> _Compiled:
    if isinstance(node, Num):
        value = np.float64(node.value)
        return lambda columns: value
    if isinstance(node, Var):
        index = node.index - 1
        return lambda columns: columns[index]
    ufunc = _UFUNCS[node.name]
    if len(node.args) == 1:
        inner = _compile(node.args[0])
        return lambda columns: ufunc(inner(columns))
    left, right = (_compile(arg) for arg in node.args)
    return lambda columns: ufunc(left(columns), right(columns))


def _to_sympy(node: Node, sympy: Any, symbols: list[Any]) -> Any:
    if isinstance(node, Num) and node.constant:
        return sympy.pi if node.constant == "pi" else sympy.E
    if isinstance(node, Num):
        return sympy.Integer(node.value) if isinstance(node.value, int) else sympy.Float(node.value)
    if isinstance(node, Var):
        return symbols[node.index - 1]
    args = [_to_sympy(arg, sympy, symbols) for arg in node.args]
    if node.name in _OPERATORS:
        return _OPERATORS[node.name](*args)
    return getattr(sympy, FUNCTIONS[node.name][1])(*args)

"""Formulas: what the whitelist accepts equals NumPy; everything else, and absurd input, refused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from kan_engine import expression
from kan_engine.config import EXPRESSION_MAX
from kan_engine.errors import ConfigError
from kan_engine.expression import parse
from kan_engine.untrusted import printable

pytestmark = pytest.mark.filterwarnings("error")  # no NumPy, SyntaxWarning or SymPy warning leaks

RNG = np.random.default_rng(0)
X = RNG.uniform(-0.9, 0.9, size=(257, 3))  # inside every function's domain (arcsin, log|.|)
a, b, c = X.T

ACCEPTED: list[tuple[str, int, Callable[[], np.ndarray]]] = [
    ("exp(sin(pi*x1) + x2**2)", 2, lambda: np.exp(np.sin(np.pi * a) + b**2)),
    ("x1*x2", 2, lambda: a * b),
    ("x1/x2 - 3", 2, lambda: a / b - 3),
    ("-x1**2", 1, lambda: -(a**2)),  # ** binds tighter than unary minus
    ("2**-x1", 1, lambda: 2.0 ** (-a)),
    ("abs(x1)**x2**2", 2, lambda: np.abs(a) ** (b**2)),  # right-associative
    ("+x1 - -x2", 2, lambda: a + b),
    ("(x1 + x2) * x3", 3, lambda: (a + b) * c),
    ("x3", 3, lambda: c),
    ("1e-3*x1 + 10 + e", 1, lambda: 1e-3 * a + 10 + np.e),
    ("  x1\n  + x2  ", 2, lambda: a + b),  # a formula may span lines (a TOML multi-line string)
    ("sin(x1) + cos(x1) + tan(x1)", 1, lambda: np.sin(a) + np.cos(a) + np.tan(a)),
    ("arcsin(x1) + arccos(x1) + arctan(x1)", 1, lambda: np.arcsin(a) + np.arccos(a) + np.arctan(a)),
    ("asin(x1) + acos(x1) + atan(x1)", 1, lambda: np.arcsin(a) + np.arccos(a) + np.arctan(a)),
    ("sinh(x1) * cosh(x2) / tanh(x3)", 3, lambda: np.sinh(a) * np.cosh(b) / np.tanh(c)),
    ("log(abs(x1)) + sqrt(abs(x2))", 2, lambda: np.log(np.abs(a)) + np.sqrt(np.abs(b))),
]


@pytest.mark.parametrize(("text", "arity", "expected"), ACCEPTED, ids=[t for t, *_ in ACCEPTED])
def test_accepted_formulas_equal_numpy(
    text: str, arity: int, expected: Callable[[], np.ndarray]
) -> None:
    formula = parse(text)
    assert formula.text == text.strip()
    assert formula.arity == arity
    values = formula(X[:, :arity])
    assert values.shape == (len(X),) and values.dtype == np.float64
    np.testing.assert_allclose(values, expected(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("text", "arity", "expected"), ACCEPTED, ids=[t for t, *_ in ACCEPTED])
def test_sympy_form_agrees(text: str, arity: int, expected: Callable[[], np.ndarray]) -> None:
    sympy = pytest.importorskip("sympy")
    symbols = [sympy.Symbol(f"x{i}", real=True) for i in range(1, arity + 1)]
    form = parse(text).to_sympy()
    assert form.free_symbols <= set(symbols)
    values = sympy.lambdify(symbols, form, "numpy")(*X[:, :arity].T)
    np.testing.assert_allclose(np.broadcast_to(values, (len(X),)), expected(), rtol=1e-10)


def test_sympy_form_keeps_constants_symbolic_and_big_powers_unevaluated() -> None:
    sympy = pytest.importorskip("sympy")
    form = parse("pi*e + abs(x1) + arcsin(x1)").to_sympy()
    assert form.has(sympy.pi) and form.has(sympy.E)
    assert form.has(sympy.Abs) and form.has(sympy.asin)
    tower = parse("9**9**9").to_sympy()  # evaluated, it would be 370 million digits
    assert isinstance(tower, sympy.Pow) and not tower.is_Integer


def test_non_finite_values_are_returned_without_warnings() -> None:
    x = np.array([[0.0], [-1.0], [1e300]])
    np.testing.assert_array_equal(parse("log(x1)")(x)[:2], [-np.inf, np.nan])
    assert np.isinf(parse("x1**2")(x)[2])  # overflow
    assert np.isinf(parse("1/x1")(x)[0])
    # literals alone follow NumPy too: Python floats would raise or turn complex here
    np.testing.assert_array_equal(parse("1/0 + 0*x1")(x[:1]), [np.inf])
    np.testing.assert_array_equal(parse("(-1)**0.5 + 0*x1")(x[:1]), [np.nan])
    np.testing.assert_array_equal(parse("10.0**400 + 0*x1")(x[:1]), [np.inf])


def test_inputs_of_any_float_dtype_across_chunks() -> None:
    x = RNG.uniform(-1, 1, size=(70_000, 2)).astype(np.float32)  # more rows than one chunk
    x64 = x.astype(np.float64)
    values = parse("x1*x2 + sin(x2)")(x)
    np.testing.assert_array_equal(values, x64[:, 0] * x64[:, 1] + np.sin(x64[:, 1]))
    np.testing.assert_array_equal(parse("2.5")(np.empty((5, 0))), np.full(5, 2.5))


def test_inputs_of_the_wrong_shape_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"needs inputs \(N, 2\)"):
        parse("x1 + x2")(np.zeros((4, 3)))
    with pytest.raises(ValueError):
        parse("x1")(np.zeros(4))


def test_the_length_limit_is_the_configs() -> None:
    assert expression.MAX_LENGTH == EXPRESSION_MAX
    longest = "x1*1." + "0" * 994 + "1"  # 1000 characters
    assert parse(longest)(np.array([[2.0]])) == 2.0
    with pytest.raises(ConfigError, match="1001 characters long"):
        parse(longest + "1")


REFUSED = [
    ("__import__('os').system('true')", "attribute access (.system)"),
    ("().__class__.__bases__", "attribute access (.__bases__)"),
    ("x1.real", "attribute access (.real)"),
    ("sin(x1).real + 1", "attribute access (.real) is not allowed at column 1 (sin(x1).real)"),
    ("open('f')", "unknown function open"),
    ("__import__", "unknown name __import__"),
    ("eval('1')", "unknown function eval"),
    ("lambda: 1", "a lambda"),
    ("[x1][0]", "a subscript"),
    ("x1[0]", "a subscript"),
    ("'a'", "a string ('a')"),
    ("b'a'", "a string (b'a')"),
    ("x1 if x1 else x2", "a conditional"),
    ("x1 < 2", "a comparison"),
    ("x1 == x2", "a comparison"),
    ("x1 and x2", "and / or"),
    ("sin(x1, x2)", "sin takes one argument, found 2"),
    ("sin()", "sin takes one argument, found 0"),
    ("sin(x=1)", "sin takes no keyword arguments (found x=)"),
    ("sin(**x1)", "sin takes no keyword arguments (found **)"),
    ("sin(*x1)", "a starred argument"),
    ("x", "unknown name x: variables are x1, x2, ... x100"),
    ("y + x1", "unknown name y"),
    ("foo", "unknown name foo"),
    ("x0", "unknown name x0"),
    ("x01", "unknown name x01"),
    ("x101", "variables go up to x100"),
    ("sin", "sin is a function: write sin(...)"),
    ("pi(x1)", "pi is not a function"),
    ("x1(2)", "x1 is not a function"),
    ("(1)(2)", "a call of the value 1"),
    ("True", "True is not allowed"),
    ("None", "None is not allowed"),
    ("...", "... is not allowed"),
    ("1j", "a complex number (1j)"),
    ("1e999", "the number 1e999 is too large"),
    ("9" * 400, "is too large for float64"),
    ("x1 // 2", "the operator //"),
    ("x1 % 2", "the operator %"),
    ("x1 @ x2", "the operator @"),
    ("x1 ^ 2", "write ** for a power"),
    ("x1 & x2", "the operator &"),
    ("x1 << 2", "the operator <<"),
    ("not x1", "the operator not"),
    ("~x1", "the operator ~"),
    ("f'{x1}'", "an f-string"),
    ("(y := 2)", "an assignment (:=)"),
    ("[x1]", "a list"),
    ("(x1, x2)", "a tuple"),
    ("x1,", "a tuple"),
    ("{x1}", "a set"),
    ("{x1: 1}", "a dict"),
    ("[v for v in x1]", "a comprehension"),
    ("(v for v in x1)", "a generator"),
    ("x1 +", "is not a formula: invalid syntax at the end"),
    ("x1 = 2", "is not a formula: invalid syntax at column 4"),
    ("x1 2", "invalid syntax at column 4"),
    ("x1\n+ * 2", "invalid syntax at column 6"),  # a line break counts as one column
    ("sin(x1", "was never closed"),
    ("x1; x2", "is not a formula"),
    ("", "is empty"),
    ("   \n ", "is empty"),
    ("π*x1", "'π' at column 1 is not allowed: a formula is plain ASCII"),
    ("ｓｉｎ(x1)", "plain ASCII"),  # Python would read it as sin(x1)
    ("x1\x1b[2J", "'\\x1b' at column 3"),
    ("\u202ex1", "'\\u202e' at column 1"),
    ("x1\x00", "'\\x00'"),
    ("(" * 10000 + "x1" + ")" * 10000, "characters long"),
    ("x" * 2000, "is 2000 characters long (at most 1000)"),
    ("-" * 999 + "x", "nested more than 100 levels deep"),
    ("x1**" * 249 + "x1", "nested more than 100 levels deep"),
    ("+".join(["1"] * 499), "nested more than 100 levels deep"),
    ("(" * 300 + "x1" + ")" * 300, "too many nested parentheses"),
    ("sin(" * 150 + "x1" + ")" * 150, "nested more than 100 levels deep"),
]


@pytest.mark.parametrize(("text", "fragment"), REFUSED, ids=[printable(t)[:40] for t, _ in REFUSED])
def test_refused_with_the_key_and_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, source="preset.toml")
    error = caught.value
    assert (error.source, error.key) == ("preset.toml", "data.function")
    assert fragment in error.reason
    assert "\n" not in error.reason and printable(error.reason) == error.reason  # one safe line


def test_the_key_is_the_callers() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("foo", key="model.formula")
    assert caught.value.key == "model.formula"
    assert str(caught.value).startswith("model.formula: unknown name foo")


def test_nesting_at_the_limit_is_accepted_one_deeper_refused() -> None:
    depth = expression.MAX_DEPTH
    at_limit = "-" * (depth - 1) + "x1"  # depth - 1 negations around one name
    values = parse(at_limit)(np.array([[2.0]]))
    np.testing.assert_array_equal(values, [2.0 if (depth - 1) % 2 == 0 else -2.0])
    with pytest.raises(ConfigError, match="nested more than"):
        parse("-" + at_limit)


def _balanced_sum(leaves: int) -> str:
    return "x1" if leaves == 1 else f"({_balanced_sum(leaves // 2)}+{_balanced_sum(leaves // 2)})"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("(" * 10000 + "x1" + ")" * 10000, "too many nested parentheses"),
        ("sin(" * 10000 + "x1" + ")" * 10000, "too many nested parentheses"),
        ("-" * 100_000 + "1", "nested more than"),  # MemoryError inside the parser
        ("x1**" * 10000 + "x1", "nested more than"),
        ("+".join(["x1"] * 200_000), "nested more than"),  # RecursionError inside the parser
        ("x1<" * 100_000 + "x1", "more than 1000 parts"),  # flat, but huge
        (_balanced_sum(2048), "more than 1000 parts"),  # 12 levels only
    ],
    ids=["parens", "calls", "unary", "power", "sum", "compare", "balanced"],
)
def test_absurd_input_is_refused_cleanly_even_past_the_length_limit(
    text: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the length check, the parser's own limits and ours still refuse (no crash)."""
    monkeypatch.setattr(expression, "MAX_LENGTH", 10**7)
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert fragment in caught.value.reason

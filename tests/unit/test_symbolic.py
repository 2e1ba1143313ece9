"""Symbolic formulas: edges whose splines were set to known functions come back as those
functions, a stack composes to the formula it computes, and formulas are scored by their own
values.

The layers are real KANLinear layers (float64, base branch off) whose spline coefficients are the
least-squares fit of a target on the layer's own basis, so a fit that ignored the layer's
function, the input range or the affine maps would miss.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import sympy as sp
import torch

from kan_engine import symbolic
from kan_engine.errors import ConfigError, SymbolicError
from kan_engine.kan import KANLinear
from kan_engine.symbolic_fit import fit_edge
from kan_engine.symbolic_library import LIBRARY, Candidate, pick

Fn = Callable[[torch.Tensor], torch.Tensor]


def spline_layer(
    functions: list[list[Fn]], grid_range: tuple[float, float], grid_size: int = 16
) -> KANLinear:
    """A layer whose edge i -> j computes functions[j][i] on grid_range (splines only)."""
    n_out, n_in = len(functions), len(functions[0])
    layer = KANLinear(n_in, n_out, grid_size=grid_size, grid_range=grid_range, dtype=torch.float64)
    x = torch.linspace(*grid_range, 400, dtype=torch.float64)
    basis = layer.b_splines(x[:, None].expand(-1, n_in))  # (P, in, G+k)
    with torch.no_grad():
        layer.base_weight.zero_()
        for j, row in enumerate(functions):
            for i, f in enumerate(row):
                solution = torch.linalg.lstsq(basis[:, i], f(x)[:, None]).solution  # (G+k, 1)
                layer.spline_weight[j, :, i] = solution[:, 0]
    return layer


def edge_samples(f: Fn, low: float = -1.0, high: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """phi of a one-edge layer set to f, sampled on [low, high] inside its grid."""
    layer = spline_layer([[f]], (low - 0.2, high + 0.2))
    x = torch.linspace(low, high, 256, dtype=torch.float64)
    with torch.no_grad():
        return x.numpy(), layer.edge_function(x, 0, 0).numpy()


@pytest.mark.parametrize(
    ("f", "span", "name", "constants"),
    [
        (lambda x: x**2, (-1.0, 2.0), "x^2", (1.0, 1.0, 0.0, 0.0)),
        (lambda x: (x - 0.5) ** 3, (-1.0, 2.0), "x^3", (1.0, 1.0, -0.5, 0.0)),
        (lambda x: torch.sin(2 * x + 0.5), (-1.0, 1.0), "sin", (1.0, 2.0, 0.5, 0.0)),
        (lambda x: -torch.sin(2 * x + 0.5), (-1.0, 1.0), "sin", (1.0, 2.0, 0.5 - math.pi, 0.0)),
        (torch.exp, (-1.0, 1.0), "exp", (1.0, 1.0, 0.0, 0.0)),
        (lambda x: 2 * torch.tanh(3 * x - 0.5) + 1, (-1.0, 1.0), "tanh", (2.0, 3.0, -0.5, 1.0)),
        (lambda x: torch.log(x + 1.5), (-1.0, 2.0), "log", (1.0, 1.0, 1.5, 0.0)),
        (lambda x: 0.5 / (x + 1.5), (-1.0, 2.0), "1/x", (0.5, 1.0, 1.5, 0.0)),
    ],
)
def test_an_edge_set_to_a_function_is_fitted_as_that_function(
    f: Fn, span: tuple[float, float], name: str, constants: tuple[float, float, float, float]
) -> None:
    """Constants in their canonical form, whatever equivalent point the search ended on (an
    input span other than [-1, 1] checks that the scale of a power goes into a)."""
    x, y = edge_samples(f, *span)
    fits = fit_edge(x, y)
    best = fits[0]
    assert best.name == name, [(fit.name, fit.r2) for fit in fits[:3]]
    assert best.r2 > 0.999
    assert (best.a, best.b, best.c, best.d) == pytest.approx(constants, abs=2e-3)
    np.testing.assert_allclose(best.values(x), y, atol=1e-3)


CANONICAL = {  # what the canonical form promises, beyond computing the same function
    "x": lambda a, b, c: b == 1 and c == 0,
    "exp": lambda a, b, c: c == 0,
    "sin": lambda a, b, c: a > 0 and b > 0 and -math.pi < c <= math.pi,
    "tanh": lambda a, b, c: b > 0,
    "arctan": lambda a, b, c: b > 0,
    "gaussian": lambda a, b, c: b > 0,
}


@pytest.mark.parametrize("cand", [c for c in LIBRARY if c.name != "0"], ids=lambda c: c.name)
def test_the_canonical_form_computes_the_same_function(cand: Candidate) -> None:
    x = np.linspace(-1, 1, 101)
    tried = 0
    for b in (-2.5, -1.0, 0.6, 1.7):
        for c in (-7.0, -3.2, 0.3, 4.0, 9.5):
            u = (b * x + c)[None]
            if not cand.domain(u)[0]:
                continue
            tried += 1
            a, b2, c2, d = cand.canon(-1.3, b, c, 0.4)
            np.testing.assert_allclose(
                a * cand.numpy(b2 * x + c2) + d, -1.3 * cand.numpy(u[0]) + 0.4, atol=1e-12
            )
            if cand.name in CANONICAL:
                assert CANONICAL[cand.name](a, b2, c2), (a, b2, c2)
            else:  # powers, inverse powers, abs, sqrt, log: the scale of x goes into a
                assert abs(b2) == 1
    assert tried >= 4


def test_a_straight_edge_is_x_though_curved_candidates_tie_with_it() -> None:
    x, y = edge_samples(lambda x: 0.7 * x - 0.2)
    fits = fit_edge(x, y)
    assert fits[0].name == "x"
    assert (fits[0].a, fits[0].b, fits[0].c, fits[0].d) == pytest.approx((0.7, 1, 0, -0.2))
    near = {fit.name for fit in fits[1:] if fit.r2 > 1 - 1e-6}
    assert {"sin", "exp"} <= near  # a tiny frequency or rate imitates a line: the tie is real


def test_a_near_tie_goes_to_the_simpler_candidate() -> None:
    """x - 1e-4 x^3 is sin(b x)/b to fourth order: sin explains a hair more, x is reported."""
    x = np.linspace(-1, 1, 256)
    fits = fit_edge(x, x - 1e-4 * x**3)
    better = [fit.name for fit in fits if fit.r2 > fits[0].r2]
    assert fits[0].name == "x" and "sin" in better


def test_a_constant_edge_is_the_constant_candidate() -> None:
    x = np.linspace(-1, 1, 50)
    (fit,) = fit_edge(x, np.full(50, 0.25))
    assert (fit.name, fit.a, fit.d, fit.r2) == ("0", 0.0, 0.25, 1.0)
    assert fit.sympy(sp.Symbol("x")) == sp.Float(0.25)


@pytest.mark.parametrize("f", [lambda x: x**2 + 0.1 * x, lambda x: np.tanh(30 * x)])
def test_domain_guards_keep_every_argument_inside_over_the_whole_range(
    f: Callable[[np.ndarray], np.ndarray],
) -> None:
    """On inputs that cross 0, log, sqrt and the inverse powers must shift their argument off
    the forbidden region or drop out, never score NaN; a pole may not sit between two samples
    either (a step tempts 1/x to put one there)."""
    x = np.linspace(-1, 1, 200)
    fits = fit_edge(x, f(x))
    assert {"log", "sqrt", "1/x", "1/x^2"} <= {fit.name for fit in fits}
    for fit in fits:
        assert np.isfinite(fit.r2) and np.isfinite(fit.values(x)).all(), fit
        ends = fit.b * np.array([x.min(), x.max()]) + fit.c  # the argument is affine in x
        if fit.name in ("log", "sqrt"):
            assert (ends >= 0).all(), fit
        if fit.name in ("1/x", "1/x^2"):
            assert ends[0] * ends[1] > 0, fit


def test_pick_takes_known_names_only() -> None:
    assert [c.name for c in pick(["sin", "x"])] == ["x", "sin"]  # library order
    with pytest.raises(ConfigError, match="unknown function"):
        pick(["x", "cosh"])


def target(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The [2, 1, 1] stack's function in the original variables: inputs normalised with
    (mean, std) = (3, 2) and (-1, 0.5), output de-standardised with (10, 4)."""
    u1, u2 = (x1 - 3) / 2, (x2 + 1) / 0.5
    return 4 * np.exp(np.sin(np.pi * u1) + u2**2) + 10


@pytest.fixture(scope="module")
def stack() -> tuple[list[KANLinear], symbolic.NetworkFormula]:
    first = spline_layer([[lambda x: torch.sin(math.pi * x), lambda x: x**2]], (-1.1, 1.1))
    second = spline_layer([[torch.exp]], (-1.2, 2.2))
    samples = torch.rand(500, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    formula = symbolic.network_formula(
        [first, second],
        samples,
        input_affine=[(3.0, 2.0), (-1.0, 0.5)],
        output_affine=[(10.0, 4.0)],
        names=["x1", "x2"],
    )
    return [first, second], formula


def original_points(n: int, seed: int) -> np.ndarray:
    """New points (n, 2) in the original units, inside the range the samples covered."""
    u = np.random.default_rng(seed).uniform(-0.98, 0.98, (n, 2))
    return np.stack([3 + 2 * u[:, 0], -1 + 0.5 * u[:, 1]], axis=1)


def test_a_stack_composes_to_the_formula_it_computes(
    stack: tuple[list[KANLinear], symbolic.NetworkFormula],
) -> None:
    _, result = stack
    chosen = {(e.layer, e.in_index, e.out_index): e.chosen.name for e in result.edges if e.chosen}
    assert chosen == {(0, 0, 0): "sin", (0, 1, 0): "x^2", (1, 0, 0): "exp"}
    (formula,) = result.formulas
    assert formula.free_symbols == {sp.Symbol("x1"), sp.Symbol("x2")}
    assert formula.atoms(sp.exp) and formula.atoms(sp.sin)
    assert any(power.exp == 2 for power in formula.atoms(sp.Pow))
    x = original_points(400, seed=1)
    y = target(x[:, 0], x[:, 1])
    values = symbolic.evaluate(formula, ["x1", "x2"], x)
    assert np.sqrt(np.mean((values - y) ** 2)) < 1e-2  # y spans about 1.5 .. 30
    (scores,) = result.check(x, y)
    assert scores["r2"] > 0.99999 and scores["nonfinite"] == 0
    shown = str(result.rounded()[0])
    assert "exp(" in shown and "sin(" in shown and "**2" in shown
    assert all(len(str(number)) <= 6 for number in result.rounded()[0].atoms(sp.Float))


def test_check_scores_the_formula_not_the_network(
    stack: tuple[list[KANLinear], symbolic.NetworkFormula],
) -> None:
    layers, result = stack
    x = original_points(300, seed=2)
    y = target(x[:, 0], x[:, 1])
    with torch.no_grad():
        normalised = torch.from_numpy((x - [3.0, -1.0]) / [2.0, 0.5])
        network = layers[1](layers[0](normalised)).numpy()[:, 0] * 4 + 10
    net = symbolic.regression_metrics(network, y)
    wrong = result.formulas[0].replace(sp.sin, sp.cos)
    assert symbolic.check(wrong, x, y, ["x1", "x2"])["rmse"] > 100 * net["rmse"]
    offset = symbolic.check(sp.Symbol("x1") + 1, x, x[:, 0], ["x1", "x2"])
    assert offset["rmse"] == pytest.approx(1.0) and offset["mae"] == pytest.approx(1.0)
    undefined = symbolic.check(sp.log(sp.Symbol("x2")), x, y, ["x1", "x2"])  # x2 < 0 here
    assert undefined["nonfinite"] == len(x) and math.isnan(undefined["rmse"])


def test_one_edge_is_fitted_as_the_network_formula_fits_it(
    stack: tuple[list[KANLinear], symbolic.NetworkFormula],
) -> None:
    """`fit_layer_edge` on the span `network_formula` used gives the candidates it composed,
    and `edge_text` reads the chosen one with its constants rounded."""
    (first, _), result = stack
    edge = next(e for e in result.edges if (e.layer, e.in_index) == (0, 0))
    fits = symbolic.fit_layer_edge(first, 0, 0, edge.low, edge.high)
    assert fits == edge.candidates and fits[0].name == "sin"
    text = symbolic.edge_text(fits[0])
    assert text.startswith("sin(3.14*x") and sp.sympify(text).free_symbols == {sp.Symbol("x")}
    assert symbolic.edge_text(fits[0], var="u").startswith("sin(3.14*u")


def test_edges_below_the_threshold_become_zero() -> None:
    layer = spline_layer([[lambda x: x**2, lambda x: 1e-4 * x]], (-1.1, 1.1))
    samples = torch.rand(200, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    calls: list[tuple[int, int]] = []
    result = symbolic.network_formula(
        [layer], samples, threshold=1e-2, progress=lambda *c: calls.append(c)
    )
    assert calls == [(1, 1)]  # one edge cleared the threshold
    by_input = {e.in_index: e for e in result.edges}
    assert by_input[1].candidates == () and by_input[1].chosen is None
    assert by_input[1].importance == pytest.approx(0.5e-4, rel=0.05)  # mean |1e-4 x| on [-1, 1]
    assert by_input[0].chosen is not None and by_input[0].chosen.name == "x^2"
    assert result.formulas[0].free_symbols == {sp.Symbol("x1")}


def test_edges_are_fitted_on_the_range_their_inputs_take() -> None:
    """Inputs in [2, 4]: the splines are zero left of their grid, so a fit on any fixed range
    such as [-1, 1] would find a constant."""
    layer = spline_layer([[lambda x: x**2]], (1.8, 4.2))
    samples = torch.rand(200, 1, generator=torch.Generator().manual_seed(5)) * 2 + 2
    result = symbolic.network_formula([layer], samples)
    (edge,) = result.edges
    assert edge.chosen is not None and edge.chosen.name == "x^2"
    assert (edge.low, edge.high) == pytest.approx((float(samples.min()), float(samples.max())))
    x = np.linspace(2.05, 3.95, 50)[:, None]
    np.testing.assert_allclose(symbolic.evaluate(result.formulas[0], ["x1"], x), x[:, 0] ** 2,
                               atol=1e-3)  # fmt: skip


def test_a_layer_is_fitted_also_where_the_formula_of_the_layers_before_takes_it() -> None:
    """The first edge's x^2 fit misses its ripple, so the formula feeds the sqrt edge values
    below any the network does (about -0.23 against -0.19); a sqrt fitted on the network's range
    only would start inside that gap and make the formula NaN on its own samples."""
    first = spline_layer([[lambda x: x**2 - 0.2 * (1 - torch.cos(6 * x))]], (-1.1, 1.1))
    second = spline_layer([[lambda s: torch.sqrt(s + 0.2)]], (-0.195, 1.3))
    samples = torch.linspace(-1, 1, 301, dtype=torch.float64)[:, None]  # (301, 1)
    with torch.no_grad():
        inner = first(samples)
        network = second(inner).numpy()[:, 0]
    result = symbolic.network_formula([first, second], samples, library=pick(["x^2", "sqrt"]))
    edge = result.edges[1]
    assert edge.chosen is not None and edge.chosen.name == "sqrt"
    assert edge.low < float(inner.min()) - 0.02
    (scores,) = result.check(samples.numpy(), network)
    assert scores["nonfinite"] == 0 and scores["r2"] < 0.9  # finite, and honestly worse


def test_evaluate_walks_every_library_node_like_numpy() -> None:
    x1, x2 = sp.symbols("x1 x2")
    expr = (
        sp.sqrt(x1) + sp.log(x1) + 1 / x2**2 + sp.Abs(x2) * sp.atan(x1) - sp.tanh(x2)
        + sp.exp(-(x1**2)) + sp.sin(2 * x1 + sp.pi / 2) + x2**3 + sp.Float(0.5) * sp.E
    )  # fmt: skip
    x = np.random.default_rng(4).uniform([0.1, -2.0], [3.0, -0.1], (50, 2))
    a, b = x[:, 0], x[:, 1]
    expected = (
        np.sqrt(a) + np.log(a) + 1 / b**2 + np.abs(b) * np.arctan(a) - np.tanh(b)
        + np.exp(-(a**2)) + np.cos(2 * a) + b**3 + 0.5 * np.e
    )  # fmt: skip
    np.testing.assert_allclose(symbolic.evaluate(expr, [x1, x2], x), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "expr",
    [
        sp.gamma(sp.Symbol("x1")),
        sp.Function("f")(sp.Symbol("x1")),
        sp.Symbol("z") + 1,
        sp.Symbol("x1") + sp.oo,
        sp.Max(sp.Symbol("x1"), 0),
        "x1 + 1",  # a string would be parsed by eval: refused
    ],
)
def test_evaluate_refuses_what_it_does_not_know(expr: sp.Expr | str) -> None:
    with pytest.raises(SymbolicError):
        symbolic.evaluate(expr, ["x1"], np.ones((3, 1)))


def test_importing_the_engine_modules_does_not_load_sympy() -> None:
    code = "import sys, kan_engine.symbolic; print('sympy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"

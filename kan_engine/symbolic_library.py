"""The candidate functions a KAN edge is matched against, for symbolic formulas (issue 18).

An edge phi(x) is described as a * f(b*x + c) + d for one f of this library. Each candidate
carries what the fit needs and nothing more:

* `numpy`: f on arrays, and `domain`: whether every argument of a row lies where f is defined
  (log, sqrt and the inverse powers would otherwise put NaN or inf into the ranking; exp is kept
  below overflow). A (b, c) whose argument leaves the domain is skipped, never scored.
* `starts`: the coarse grid of (beta, gamma) the search tries, on the edge's inputs rescaled to
  t in [-1, 1] (so one grid serves every input range), and `free`: which of beta, gamma the
  refinement may move. Where a parameter only duplicates a, d or the other one (the scale of a
  power, the shift of exp), it is fixed, so the refinement never walks along a flat valley.
* `canon`: one canonical form of (a, b, c, d) among the equivalent ones (sin(-u) = -sin(u),
  (s*u)^p = s^p * u^p, ...), so a fit of sin(2x + 0.5) reads a = 1, b = 2, c = 0.5, whichever
  equivalent point the search ended on.
* `sympy`: f as a sympy expression of its argument (sympy is imported only there, so importing
  this module does not load it), and `complexity`: the tie-breaker that makes a straight edge
  `x` rather than sin with a tiny b.

cos is left out (sin with a phase is cos) and so is the sigmoid (sigmoid(u) = (1 + tanh(u/2))/2:
the same affine family as tanh, so it could only tie with it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kan_engine.errors import ConfigError, SymbolicError

__all__ = ["LIBRARY", "Candidate", "pick", "sympy_module"]

Params = tuple[float, float, float, float]  # (a, b, c, d) of a * f(b*x + c) + d
# exp(50) ~ 5e21: far beyond any edge, and its square still fits a float64
EXP_LIMIT = 50.0
# the smallest |argument| the inverse powers accept (t units: the inputs span [-1, 1])
POLE_GAP = 1e-3
# the smallest argument of sqrt and log: a fit that starts exactly at the lowest sample would put
# that sample a rounding error outside the domain once the constants are mapped back to x
EDGE_GAP = 1e-6


def sympy_module() -> Any:
    """sympy, imported on first use: it is an optional extra, and slow to import."""
    try:
        import sympy
    except ImportError:
        raise SymbolicError(
            "symbolic formulas need sympy: pip install 'kan-tui[symbolic]'"
        ) from None
    return sympy


@dataclass(frozen=True)
class Candidate:
    """One f of the library; see the module docstring for what each field is for."""

    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    sympy: Callable[[Any], Any]
    complexity: int
    starts: tuple[tuple[float, float], ...]  # (beta, gamma): argument beta * t + gamma
    free: tuple[bool, bool]  # whether beta, gamma are refined
    domain: Callable[[np.ndarray], np.ndarray]  # u (K, P) -> (K,) every argument defined
    canon: Callable[[float, float, float, float], Params]


def _anywhere(u: np.ndarray) -> np.ndarray:
    return np.ones(u.shape[:-1], dtype=bool)


def _pole_outside(u: np.ndarray) -> np.ndarray:
    """The argument keeps one sign, POLE_GAP away from 0, over all samples: the pole lies outside
    the sampled interval, not merely between two samples."""
    return np.all(u > POLE_GAP, axis=-1) | np.all(u < -POLE_GAP, axis=-1)


def _above_edge(u: np.ndarray) -> np.ndarray:
    return np.all(u >= EDGE_GAP, axis=-1)


def _centred(betas: Iterable[float], centres: Iterable[float]) -> tuple[tuple[float, float], ...]:
    """Starts whose argument beta * (t - centre) is zero at `centre` (a kink, pole or peak)."""
    return tuple((b, -b * x0) for b in betas for x0 in centres)


def _homogeneous(degree: float) -> Callable[[float, float, float, float], Params]:
    """Canon of an f with f(s*u) = s^degree * f(u) for s > 0: b becomes +-1, the scale goes
    into a. (The powers and abs search with beta = +1, so their b is +1: (x + c)^2.)"""

    def canon(a: float, b: float, c: float, d: float) -> Params:
        s = abs(b)
        return a * s**degree, math.copysign(1.0, b), c / s, d

    return canon


def _symmetric(odd: bool) -> Callable[[float, float, float, float], Params]:
    """Canon of an odd or even f: b > 0 (the refinement may carry b across 0)."""

    def canon(a: float, b: float, c: float, d: float) -> Params:
        if b < 0:
            return (-a if odd else a), -b, -c, d
        return a, b, c, d

    return canon


def _linear(a: float, b: float, c: float, d: float) -> Params:
    return a * b, 1.0, 0.0, d + a * c


def _exp(a: float, b: float, c: float, d: float) -> Params:
    return a * math.exp(c), b, 0.0, d


def _log(a: float, b: float, c: float, d: float) -> Params:
    s = abs(b)
    return a, math.copysign(1.0, b), c / s, d + a * math.log(s)


def _sin(a: float, b: float, c: float, d: float) -> Params:
    """b > 0 (sin(-u) = -sin(u)), a > 0 (-sin(u) = sin(u + pi)), c in (-pi, pi]."""
    if b < 0:
        a, b, c = -a, -b, -c
    if a < 0:
        a, c = -a, c + math.pi
    return a, b, math.pi - (math.pi - c) % (2 * math.pi), d


def _constant(a: float, b: float, c: float, d: float) -> Params:
    return 0.0, 0.0, 0.0, d


def _sp(name: str) -> Callable[[Any], Any]:
    return lambda u: getattr(sympy_module(), name)(u)


WIDTHS = (0.5, 1.0, 2.0, 4.0, 8.0)
CENTRES = tuple(np.linspace(-1.5, 1.5, 7))
SHIFTS = tuple(np.linspace(-2.0, 2.0, 9))
POLES = (1.02, 1.1, 1.3, 2.0, 4.0, 10.0)  # distance of a pole from the centre of [-1, 1]
EDGES = (1.001, 1.05, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0)  # where sqrt / log start, left of t = -1
FREQUENCIES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0)
PHASES = tuple(np.linspace(-math.pi, math.pi, 8, endpoint=False))
POWERS = _centred((1.0,), SHIFTS)
HALF_LINES = _centred((1.0,), [-e for e in EDGES]) + _centred((-1.0,), EDGES)


def _power(name: str, p: int, complexity: int) -> Candidate:
    return Candidate(
        name, lambda u: u**p, lambda u: u**p, complexity, POWERS, (False, True), _anywhere,
        _homogeneous(p),
    )  # fmt: skip


def _inverse(name: str, p: int, complexity: int) -> Candidate:
    return Candidate(
        name, lambda u: 1.0 / u**p, lambda u: u**-p, complexity,
        _centred((1.0,), [s * x0 for s in (-1, 1) for x0 in POLES]), (False, True),
        _pole_outside, _homogeneous(-p),
    )  # fmt: skip


LIBRARY: tuple[Candidate, ...] = (
    Candidate("0", np.zeros_like, lambda u: sympy_module().Integer(0), 0, ((0.0, 0.0),),
              (False, False), _anywhere, _constant),
    Candidate("x", lambda u: u, lambda u: u, 1, ((1.0, 0.0),), (False, False), _anywhere, _linear),
    _power("x^2", 2, 2),
    _power("x^3", 3, 3),
    _power("x^4", 4, 3),
    _inverse("1/x", 1, 2),
    _inverse("1/x^2", 2, 3),
    Candidate("sqrt", np.sqrt, _sp("sqrt"), 2, HALF_LINES,
              (False, True), _above_edge, _homogeneous(0.5)),
    Candidate("log", np.log, _sp("log"), 2,
              HALF_LINES, (False, True), _above_edge, _log),
    Candidate("exp", np.exp, _sp("exp"), 2,
              tuple((s * w, 0.0) for s in (-1, 1) for w in (0.25, *WIDTHS)), (True, False),
              lambda u: np.all(np.abs(u) <= EXP_LIMIT, axis=-1), _exp),
    Candidate("abs", np.abs, _sp("Abs"), 2, _centred((1.0,), SHIFTS), (False, True), _anywhere,
              _homogeneous(1)),
    Candidate("sin", np.sin, _sp("sin"), 3, tuple((f, p) for f in FREQUENCIES for p in PHASES),
              (True, True), _anywhere, _sin),
    Candidate("tanh", np.tanh, _sp("tanh"), 3, _centred(WIDTHS, CENTRES), (True, True),
              _anywhere, _symmetric(odd=True)),
    Candidate("gaussian", lambda u: np.exp(-(u**2)), lambda u: sympy_module().exp(-(u**2)), 3,
              _centred(WIDTHS, CENTRES), (True, True), _anywhere, _symmetric(odd=False)),
    Candidate("arctan", np.arctan, _sp("atan"), 4, _centred(WIDTHS, CENTRES), (True, True),
              _anywhere, _symmetric(odd=True)),
)  # fmt: skip
BY_NAME = {c.name: c for c in LIBRARY}


def pick(names: Iterable[str]) -> tuple[Candidate, ...]:
    """The candidates of these names, in library order; an unknown name is a ConfigError."""
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise ConfigError(
            "--library", ", ".join(unknown), f"unknown function (known: {', '.join(BY_NAME)})"
        )
    return tuple(c for c in LIBRARY if c.name in wanted)

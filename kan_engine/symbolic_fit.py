"""One edge's curve matched against the library: y ~ a * f(b*x + c) + d, best candidates first.

Per candidate: the inputs are rescaled to t in [-1, 1], a coarse grid of arguments beta*t + gamma
is tried (the candidate's `starts`), and for each the best (a, d) is the closed-form linear least
squares solution, so the grid only searches the two parameters that enter non-linearly. The best
few grid points are then refined by Levenberg-Marquardt on the same "variable projection"
residual (a, d re-solved at every step), which keeps the search in two dimensions and never
leaves a, d behind their optimum. A step whose argument leaves the candidate's domain is
rejected like one that increases the residual, so no NaN or inf can reach a score.

Candidates are ranked by R^2 - penalty * complexity: R^2 of a smooth edge creeps towards 1 for
many candidates (sin with a tiny frequency is almost a line, exp with a tiny rate too), so among
near-ties the simpler function is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kan_engine.symbolic_library import BY_NAME, LIBRARY, Candidate, sympy_module

__all__ = ["PENALTY", "EdgeFit", "fit_edge"]

# R^2 given up per unit of complexity: 1e-3 lets sin (3) beat x^2 (2) only if it explains
# 0.1 % more of the variance, and keeps a line a line.
PENALTY = 1e-3
STARTS = 3  # grid points refined per candidate
STEPS = 30  # Levenberg-Marquardt iterations per start at most (most stop within 10)
TOLERANCE = 1e-10  # a refinement step gaining less than this share of the variance is the last


@dataclass(frozen=True)
class EdgeFit:
    """a * f(b*x + c) + d for the library function `name`, and how well it fits (R^2)."""

    name: str
    a: float
    b: float
    c: float
    d: float
    r2: float
    complexity: int

    def values(self, x: np.ndarray) -> np.ndarray:
        """The fitted function at x (P,) -> (P,) (NaN where b*x + c leaves f's domain)."""
        f = BY_NAME[self.name].numpy
        with np.errstate(all="ignore"):
            return self.a * f(self.b * np.asarray(x, dtype=np.float64) + self.c) + self.d

    def sympy(self, var: Any) -> Any:
        """The fit as a sympy expression of `var` (a Symbol or an expression); constants that
        are exactly 0 or 1 are left out rather than written as 0.0 or 1.0."""
        sp = sympy_module()
        arg = var if self.b == 1 else -var if self.b == -1 else sp.Float(self.b) * var
        if self.c:
            arg = arg + sp.Float(self.c)
        term = BY_NAME[self.name].sympy(arg)
        if self.a != 1:
            term = sp.Float(self.a) * term
        return term + sp.Float(self.d) if self.d else term


def _project(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best a, d of y ~ a*f + d for each row of f (K, P) -> a (K,), d (K,), residuals (K, P)."""
    mean_f = f.sum(axis=1) / f.shape[1]  # (K,)
    centred = f - mean_f[:, None]  # (K, P)
    var = np.einsum("kp,kp->k", centred, centred)  # (K,)
    y_mean = y.sum() / y.size
    cov = centred @ (y - y_mean)  # (K,)
    flat = var <= 1e-300  # f constant on the samples: only d can fit
    a = np.where(flat, 0.0, cov / np.where(flat, 1.0, var))
    residual = (y - y_mean) - a[:, None] * centred  # (K, P)
    return a, y_mean - a * mean_f, residual


def _residuals(
    cand: Candidate, t: np.ndarray, y: np.ndarray, thetas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The projected residuals (K, P) at the arguments thetas[k, 0] * t + thetas[k, 1] (K, 2),
    and which rows (K,) are usable: inside the domain and finite (the others hold garbage).
    Batched because numpy's per-call overhead, not arithmetic, is the cost at P ~ 256."""
    u = thetas[:, :1] * t + thetas[:, 1:]  # (K, P)
    ok = cand.domain(u)  # (K,)
    f = np.zeros_like(u)
    with np.errstate(all="ignore"):
        f[ok] = cand.numpy(u[ok])
    ok &= np.isfinite(f).all(axis=1)
    f[~ok] = 0.0
    return _project(f, y)[2], ok


def _jacobian(
    cand: Candidate, t: np.ndarray, y: np.ndarray, theta: np.ndarray, r: np.ndarray
) -> np.ndarray:
    """d residual / d free parameters (P, F) by differences: central where both sides are in the
    domain, one-sided at its edge, zero where neither is."""
    free = [k for k in range(2) if cand.free[k]]
    steps = np.zeros((2 * len(free), 2))
    for row, k in enumerate(free):
        h = 1e-6 * max(1.0, abs(theta[k]))
        steps[2 * row, k], steps[2 * row + 1, k] = h, -h
    shifted, ok = _residuals(cand, t, y, theta + steps)  # (2F, P): +h, -h per parameter
    columns = []
    for row, k in enumerate(free):
        plus, minus, h = 2 * row, 2 * row + 1, steps[2 * row, k]
        if ok[plus] and ok[minus]:
            columns.append((shifted[plus] - shifted[minus]) / (2 * h))
        elif ok[plus] or ok[minus]:
            columns.append((shifted[plus] - r) / h if ok[plus] else (r - shifted[minus]) / h)
        else:
            columns.append(np.zeros_like(r))
    return np.stack(columns, axis=1)


def _refine(
    cand: Candidate, t: np.ndarray, y: np.ndarray, theta: np.ndarray, steps: int, tol: float
) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt on the free parameters from theta -> (theta, residual sum of squares).

    Stops once a step gains less than `tol` (the caller's share of the variance: R^2 moves by
    less than the ranking could ever see), which ends the slow walks along degenerate valleys
    (sin with b -> 0 and a -> inf imitating a line) after a few steps. theta must be usable
    (the grid only hands over such starts)."""
    r = _residuals(cand, t, y, theta[None])[0][0]  # (P,)
    cost = float(r @ r)
    free = [k for k in range(2) if cand.free[k]]
    damping = 1e-3
    for _ in range(steps if free else 0):
        jac = _jacobian(cand, t, y, theta, r)  # (P, F)
        normal, gradient = jac.T @ jac, jac.T @ r  # (F, F), (F,)
        accepted = False
        for _ in range(10):
            lhs = normal + damping * (np.diag(np.diag(normal)) + 1e-12 * np.eye(len(free)))
            trial = theta.copy()
            trial[free] += np.linalg.solve(lhs, -gradient)
            rows, ok = _residuals(cand, t, y, trial[None])
            if ok[0] and (trial_cost := float(rows[0] @ rows[0])) < cost:
                accepted = True
                break
            damping *= 4.0
        if not accepted:
            break
        gain = cost - trial_cost
        theta, r, cost, damping = trial, rows[0], trial_cost, max(damping / 3.0, 1e-12)
        if gain <= tol:
            break
    return theta, cost


def _fit_candidate(
    cand: Candidate, t: np.ndarray, y: np.ndarray, starts: int, steps: int, tol: float
) -> tuple[float, float, float, float, float] | None:
    """(beta, gamma, a, d, residual sum of squares) of the best fit in t, None when no start of
    the grid is usable."""
    grid = np.array(cand.starts, dtype=np.float64)  # (K, 2)
    residual, ok = _residuals(cand, t, y, grid)  # (K, P), (K,)
    if not ok.any():
        return None
    sse = np.where(ok, np.einsum("kp,kp->k", residual, residual), np.inf)  # (K,)
    best = None
    for index in np.argsort(sse, kind="stable")[: min(starts, int(ok.sum()))]:
        theta, cost = _refine(cand, t, y, grid[index], steps, tol)
        if best is None or cost < best[1]:
            best = (theta, cost)
    theta, cost = best
    a, d, _ = _project(cand.numpy((theta[0] * t + theta[1])[None]), y)
    return float(theta[0]), float(theta[1]), float(a[0]), float(d[0]), cost


def fit_edge(
    x: np.ndarray,
    y: np.ndarray,
    library: Sequence[Candidate] = LIBRARY,
    penalty: float = PENALTY,
    starts: int = STARTS,
    steps: int = STEPS,
) -> list[EdgeFit]:
    """Every candidate of `library` fitted to the samples y = phi(x) (P,), best first.

    Ranked by R^2 - penalty * complexity (the module docstring says why). A candidate that has
    no start inside its domain on these x is left out. A constant curve (or a single x) gives
    one answer, the constant "0" candidate with d = its value and R^2 = 1.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"fit_edge: x and y must be (P,) with P >= 2 (got {x.shape}, {y.shape})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit_edge: x and y must be finite")
    centre, half = (x.max() + x.min()) / 2, (x.max() - x.min()) / 2
    total = float(((y - y.mean()) ** 2).sum())
    if half <= 1e-12 * max(1.0, abs(centre)) or total <= 1e-24 * float(y @ y):
        return [EdgeFit("0", 0.0, 0.0, 0.0, float(y.mean()), 1.0, BY_NAME["0"].complexity)]
    t = (x - centre) / half  # (P,) in [-1, 1]
    fits = []
    for cand in library:
        found = _fit_candidate(cand, t, y, starts, steps, TOLERANCE * total)
        if found is None:
            continue
        beta, gamma, a, d, sse = found
        b = beta / half  # beta * t + gamma = b * x + c
        a, b, c, d = cand.canon(a, b, gamma - b * centre, d)
        r2 = 1.0 - sse / total
        fits.append(EdgeFit(cand.name, *map(float, (a, b, c, d, r2)), cand.complexity))
    return sorted(fits, key=lambda fit: fit.r2 - penalty * fit.complexity, reverse=True)

"""Fitting one group's peak memory in its memory-scaling parameters, monotone in each.

A configuration's scaling values ``s`` (batch size, sequence length, …) enter through basis
functions that never decrease in any of them: ``1``, the product ``x = Π s_j`` (activations
grow with batch × sequence), and where the data call for it ``s_j`` alone (memory that grows
with one parameter only, e.g. a cache per position) and ``x·s_j`` (quadratic growth in ``s_j``,
e.g. attention scores in the sequence length). Coefficients are non-negative (least squares
over every subset of the terms, the best one with no negative coefficient), so the fit is
monotone in each parameter. Terms beyond ``1, x`` enter one at a time, only when an F-test on
the residuals says the data call for them and more distinct configurations than terms were
measured: per-parameter monotone fits would need many sizes of each parameter, one shared
basis needs few, and a quadratic term fitted to noise would extrapolate wildly.

Fits are on relative error (weights ``1/y²``: run-to-run noise is relative), and each fit
keeps its leave-one-out relative residuals (the data's own spread, which the upper bound is
built from) and the covariance of its coefficients (how uncertain the fit is at ``s``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[tuple[float, ...], float]  # (scaling values, measured bytes)
Term = tuple[str, int]  # ("1", -1), ("x", -1), ("s", j) or ("xs", j)
_BASE: tuple[Term, ...] = (("1", -1), ("x", -1))
_F_ENTER = 10.0  # F statistic a term needs to enter (about the 99.5 % point of F(1, 10+))


def basis(term: Term, s: Sequence[float]) -> float:
    kind, j = term
    if kind == "1":
        return 1.0
    x = math.prod(s)
    if kind == "x":
        return x
    return float(s[j]) if kind == "s" else x * float(s[j])


@dataclass(frozen=True)
class GroupFit:
    """A fitted group: terms with their coefficients, spread and uncertainty."""

    terms: tuple[Term, ...]
    coef: tuple[float, ...]
    cov: np.ndarray  # (Φᵀ W Φ)⁻¹ over the terms with a positive coefficient (unit noise)
    active: tuple[int, ...]
    loo: tuple[float, ...]  # leave-one-out relative residuals (measured − fit) / fit
    configs: tuple[tuple[float, ...], ...]  # the measured configurations
    # every quadratic term the data allow, entered or not: the safe side outside the
    # measured sizes, where a growth too weak to pass the F-test still adds up
    convex: tuple[tuple[Term, ...], tuple[float, ...]] | None = None

    def convex_at(self, s: Sequence[float]) -> float:
        if self.convex is None:
            return self.at(s)
        terms, coef = self.convex
        return sum(c * basis(t, s) for t, c in zip(terms, coef, strict=True))

    def at(self, s: Sequence[float]) -> float:
        return sum(c * basis(t, s) for t, c in zip(self.terms, self.coef, strict=True))

    def rel_se(self, s: Sequence[float]) -> float:
        """Standard error of the fit at ``s`` relative to it, per unit of relative noise:
        small among many measurements, large with few or far outside them."""
        phi = np.array([basis(self.terms[i], s) for i in self.active])
        var = float(phi @ self.cov @ phi) if len(phi) else 0.0
        return math.sqrt(max(0.0, var)) / max(self.at(s), 1.0)

    @property
    def slope(self) -> float | None:
        """Bytes per unit of ``x`` when the fit is affine in ``x`` alone, else None."""
        return self.coef[1] if self.terms == _BASE else None

    def beyond(self, s: Sequence[float]) -> float:
        """Doublings of ``s`` beyond the measured configurations: above the nearest one at
        least as large in every parameter, plus below the nearest one no larger. Inside
        each parameter's range is not enough: bs 32 at seq 4096 lies beyond bs 32 at 1024
        and bs 4 at 4096 however wide the ranges."""

        def doublings(big: Sequence[float], small: Sequence[float]) -> float:
            return sum(math.log2(max(b / a, 1.0)) for b, a in zip(big, small, strict=True))

        up = min(doublings(s, c) for c in self.configs)
        down = min(doublings(c, s) for c in self.configs)
        return up + down

    def below(self, s: Sequence[float]) -> bool:
        """Whether ``s`` is at least as large as no measured configuration (it lies below
        or beside all of them, where a line through convex data falls short)."""
        return not any(all(a >= b for a, b in zip(s, c, strict=True)) for c in self.configs)


def fit_group(points: Sequence[Point]) -> GroupFit | None:
    """Non-negative weighted least squares of ``points``; None with fewer than two ``x``."""
    if len({math.prod(s) for s, _ in points}) < 2:
        return None
    n_params = len(points[0][0])
    configs = {s for s, _ in points}
    terms = list(_BASE)
    best = _solve(points, terms)
    while True:
        candidates = [("s", j) for j in range(n_params) if n_params > 1]
        candidates += [("xs", j) for j in range(n_params) if len({s[j] for s in configs}) >= 3]
        entered = None
        for term in candidates:
            if term in terms or len(configs) < len(terms) + 2:
                continue
            trial = _solve(points, [*terms, term])
            dof = len(points) - len(trial[3])
            if dof < 1 or trial[1] >= best[1] * (1 - 1e-9):
                continue
            f_stat = (best[1] - trial[1]) / max(trial[1] / dof, 1e-300)
            if f_stat > _F_ENTER and (entered is None or trial[1] < entered[1][1]):
                entered = (term, trial)
        if entered is None:
            break
        terms.append(entered[0])
        best = entered[1]
    coef, _, cov, active = best
    quadratic = [("xs", j) for j in range(n_params) if len({s[j] for s in configs}) >= 3]
    extra = [t for t in quadratic if t not in terms]
    convex = None
    if extra and len(configs) >= len(terms) + len(extra) + 1:
        every = [*terms, *extra]
        convex = (tuple(every), tuple(_solve(points, every)[0]))
    return GroupFit(
        tuple(terms),
        tuple(coef),
        cov,
        active,
        _loo(points, terms, coef, cov, active),
        tuple(sorted(configs)),
        convex,
    )


def _solve(
    points: Sequence[Point], terms: Sequence[Term]
) -> tuple[list[float], float, np.ndarray, tuple[int, ...]]:
    """(coefficients, weighted SSE, covariance, active terms) of the best subset of ``terms``
    whose least-squares coefficients are all ≥ 0."""
    a = np.array([[basis(t, s) for t in terms] for s, _ in points])
    y = np.array([v for _, v in points])
    sw = 1.0 / np.maximum(y, 1.0)
    aw, yw = a * sw[:, None], y * sw
    best: tuple[list[float], float, np.ndarray, tuple[int, ...]] | None = None
    for r in range(len(terms), 0, -1):
        for subset in itertools.combinations(range(len(terms)), r):
            cols = aw[:, subset]
            sol, *_ = np.linalg.lstsq(cols, yw, rcond=None)
            if np.any(sol < 0):
                continue
            sse = float(np.sum((cols @ sol - yw) ** 2))
            if best is None or sse < best[1] * (1 - 1e-12):
                coef = [0.0] * len(terms)
                for i, c in zip(subset, sol, strict=True):
                    coef[i] = float(c)
                best = (coef, sse, np.linalg.pinv(cols.T @ cols), subset)
    assert best is not None  # one term alone always has a non-negative solution
    return best


def _loo(
    points: Sequence[Point],
    terms: Sequence[Term],
    coef: Sequence[float],
    cov: np.ndarray,
    active: tuple[int, ...],
) -> tuple[float, ...]:
    """Leave-one-out relative residuals from the hat matrix (points it fully determines,
    leverage ≈ 1, or that the others predict at or below zero, say nothing about the spread
    and are left out)."""
    out = []
    for s, y in points:
        fit = sum(c * basis(t, s) for t, c in zip(terms, coef, strict=True))
        phi = np.array([basis(terms[i], s) for i in active]) / max(y, 1.0)
        lev = float(phi @ cov @ phi)
        if lev > 0.98:
            continue
        loo_res = (y - fit) / (1 - lev)
        if y - loo_res <= 0:  # the others cannot predict it at all: no relative error
            continue
        out.append(loo_res / (y - loo_res))
    return tuple(out)


def repeat_residuals(points: Sequence[Point], single: bool = False) -> list[float]:
    """Relative spread of repeated runs of one configuration (each against the others); with
    ``single``, scaled to the spread of one run about the configuration's true mean (against
    ``n - 1`` others a residual also carries their mean's error)."""
    by_config: dict[tuple[float, ...], list[float]] = {}
    for s, y in points:
        by_config.setdefault(s, []).append(y)
    out = []
    for ys in by_config.values():
        if len(ys) < 2:
            continue
        total = sum(ys)
        scale = math.sqrt((len(ys) - 1) / len(ys)) if single else 1.0
        out += [(y / ((total - y) / (len(ys) - 1)) - 1) * scale for y in ys]
    return out


@dataclass(frozen=True)
class Noise:
    """Run-to-run spread of measured peaks, relative: an upper quantile and an RMS."""

    quantile: float
    rms: float
    n: int  # residuals it was estimated from
    pure: float  # upper quantile of repeated configurations alone
    single: float  # and of one run about its configuration's true mean


_UNKNOWN_NOISE = 0.10  # relative noise assumed before any spread is measured
_NOISE_WEIGHT = 4  # residuals that default counts as, blended with the measured ones


def pool(residuals: Sequence[float], quantile: float) -> tuple[float, float, int]:
    """(upper ``quantile``, RMS, n) of relative residuals, blended with a generous default
    while they are few."""
    n, w = len(residuals), _NOISE_WEIGHT
    if n == 0:
        return _UNKNOWN_NOISE, _UNKNOWN_NOISE / 2, 0
    mags = sorted(abs(r) for r in residuals)
    level = (1 + quantile) / 2  # of |r|: one-sided, that many more are covered
    q = mags[min(n - 1, max(0, math.ceil(level * n) - 1))] * (1 + 1 / math.sqrt(n))
    rms = math.sqrt(sum(r * r for r in residuals) / n)
    return (
        (n * q + w * _UNKNOWN_NOISE) / (n + w),
        (n * rms + w * _UNKNOWN_NOISE / 2) / (n + w),
        n,
    )


@dataclass(frozen=True)
class Line:
    """y = intercept + slope·x (the prior's calibration)."""

    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


def fit_line(
    points: list[tuple[float, float]], weights: Sequence[float] | None = None
) -> Line | None:
    """Weighted least squares y = a + b·x with b ≥ 0 and a ≥ 0; None with fewer than two x."""
    xs = [p[0] for p in points]
    if len(set(xs)) < 2:
        return None
    ws = list(weights) if weights is not None else [1.0] * len(points)
    sw = sum(ws)
    mx = sum(w * x for w, (x, _) in zip(ws, points, strict=True)) / sw
    my = sum(w * y for w, (_, y) in zip(ws, points, strict=True)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, (x, _) in zip(ws, points, strict=True))
    sxy = sum(w * (x - mx) * (y - my) for w, (x, y) in zip(ws, points, strict=True))
    slope = max(0.0, sxy / sxx) if sxx > 0 else 0.0
    intercept = my - slope * mx
    if intercept < 0:  # memory never shrinks below zero: fit through the origin
        num = sum(w * x * y for w, (x, y) in zip(ws, points, strict=True))
        intercept, slope = (
            0.0,
            num / sum(w * x * x for w, (x, _) in zip(ws, points, strict=True)),
        )
    return Line(intercept, slope)


def stale(n: int, then: int) -> bool:
    """Whether ``n`` points have grown past ``then`` by a twentieth (every one below 20): when
    a fit, the pooled noise or the workers' copy of the gate is worth computing again."""
    return n - then >= max(1, then // 20)

"""Predicting a trial's peak device memory from its parameters, with an upper bound.

Trials are grouped by the parameters that change memory (the model family); within a group,
memory is affine in ``x``, the product of the memory-scaling parameters (batch size, sequence
length). A group with measurements at two or more ``x`` is fitted from them; with one, the
prior's slope (calibrated) or a safe proportional rule extrapolates; with none, the prior,
calibrated on the other groups' measurements (a device factor and a context overhead), or
uncalibrated with a cold uplift. An OOM is censored data: that configuration, and every larger
one of its group, needs more than the bound it failed at.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.memory.prior import Prior


@dataclass(frozen=True)
class Observation:
    """A finished trial's measured peak, or for an OOM a lower bound of what it needed."""

    params: Mapping[str, Any]
    peak_bytes: float
    censored: bool = False  # True: the trial ran out of memory; it needs more than peak_bytes


@dataclass(frozen=True)
class Estimate:
    """Predicted peak device footprint of a trial (bytes) and a bound it should stay under."""

    point_bytes: float
    upper_bytes: float
    source: str  # fit | one-point | calibrated-prior | cold-prior | oom-bound
    n_measured: int  # measured trials of the same group


@dataclass(frozen=True)
class _Line:
    intercept: float
    slope: float

    def at(self, x: float) -> float:
        return self.intercept + self.slope * x


class MemoryEstimator:
    """Learns peak memory per group from observations; see the module docstring."""

    def __init__(
        self,
        scaling: Sequence[str],
        groups: Sequence[str],
        prior: Prior | None = None,
        context_bytes: float = 0.0,
        quantile: float = 0.95,
        min_uplift: float = 0.03,
        cold_uplift: float = 0.15,
    ) -> None:
        self._scaling = tuple(scaling)
        self._groups = tuple(groups)
        self._prior = prior
        self._context = float(context_bytes)
        self._quantile = quantile
        self._min_uplift = min_uplift
        self._cold_uplift = cold_uplift
        self._measured: dict[tuple[Any, ...], list[tuple[float, float]]] = defaultdict(list)
        self._bounds: dict[tuple[Any, ...], list[tuple[float, float]]] = defaultdict(list)

    # -- learning ---------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        key, x = self.group_of(obs.params), self.x_of(obs.params)
        if not math.isfinite(obs.peak_bytes) or obs.peak_bytes <= 0:
            return
        target = self._bounds if obs.censored else self._measured
        target[key].append((x, float(obs.peak_bytes)))

    @property
    def has_prior(self) -> bool:
        return self._prior is not None

    @property
    def n_observations(self) -> int:
        """Measured peaks and OOM bounds learned so far."""
        return sum(map(len, self._measured.values())) + sum(map(len, self._bounds.values()))

    @property
    def params_needed(self) -> frozenset[str]:
        """The parameters a prediction reads (groups and memory-scaling)."""
        return frozenset(self._scaling + self._groups)

    def n_measured(self, params: Mapping[str, Any]) -> int:
        return len(self._measured.get(self.group_of(params), ()))

    def group_of(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(g) for g in self._groups)

    def x_of(self, params: Mapping[str, Any]) -> float:
        x = 1.0
        for name in self._scaling:
            x *= float(params[name])
        return x

    # -- predicting -------------------------------------------------------------------

    def predict(self, params: Mapping[str, Any]) -> Estimate | None:
        """The estimate for ``params``; None when nothing is known about its group yet."""
        key, x = self.group_of(params), self.x_of(params)
        points = self._measured.get(key, [])
        found = self._from_measurements(params, points, x) if points else self._from_prior(params)
        bound = self._oom_bound(key, x)
        if found is None:
            if bound is None:
                return None
            return Estimate(bound, bound * (1 + self._min_uplift), "oom-bound", 0)
        point, uplift, source = found
        upper = point * (1 + uplift)
        if bound is not None and bound > point:
            point, upper, source = bound, max(upper, bound * (1 + self._min_uplift)), "oom-bound"
        return Estimate(point, upper, source, len(points))

    def _from_measurements(
        self, params: Mapping[str, Any], points: list[tuple[float, float]], x: float
    ) -> tuple[float, float, str]:
        line = self._fit(points)
        if line is not None:
            return self._extend(line, params, points, x), self._uplift(x, points), "fit"
        # One x measured: extrapolate with the calibrated prior's slope, else proportionally
        # (safe when memory is affine with a non-negative intercept, as it is).
        x0 = points[0][0]
        y0 = sum(y for _, y in points) / len(points)
        slope = self._prior_slope(params)
        if slope is not None:
            point = y0 + slope * (x - x0)
        else:
            point = y0 * max(1.0, x / x0)
        return point, self._uplift(x, points), "one-point"

    def _extend(
        self, line: _Line, params: Mapping[str, Any], points: list[tuple[float, float]], x: float
    ) -> float:
        """The fit at ``x``; outside the measured sizes, from the nearest end with whichever of
        the fitted and the calibrated prior's slope predicts more (the safe side)."""
        slope = self._prior_slope(params)
        lo, hi = min(p[0] for p in points), max(p[0] for p in points)
        if slope is None or lo <= x <= hi:
            return line.at(x)
        edge = hi if x > hi else lo
        steeper, flatter = max(slope, line.slope), min(slope, line.slope)
        return line.at(edge) + (steeper if x > hi else flatter) * (x - edge)

    def _from_prior(self, params: Mapping[str, Any]) -> tuple[float, float, str] | None:
        traced = self._prior.bytes_at(params, self.x_of(params)) if self._prior else None
        if traced is None:
            return None
        found = self._calibration()
        if found is None:
            return traced + self._context, self._cold_uplift, "cold-prior"
        calibration, spread = found
        # State costs its size; the rest is scaled by the device factor, plus the context.
        state = self._state(params)
        point = state + calibration.at(traced - state)
        # How well the prior transfers between groups bounds how wrong it can be for this one.
        return point, self._min_uplift + spread, "calibrated-prior"

    def _oom_bound(self, key: tuple[Any, ...], x: float) -> float | None:
        bounds = [y for xb, y in self._bounds.get(key, []) if xb <= x]
        return max(bounds) if bounds else None

    @staticmethod
    def _fit(
        points: list[tuple[float, float]], weights: Sequence[float] | None = None
    ) -> _Line | None:
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
        return _Line(intercept, slope)

    def _uplift(self, x: float, points: list[tuple[float, float]]) -> float:
        """Relative margin of the upper bound: residual quantile, more when extrapolating."""
        uplift = max(self._min_uplift, self._pooled_uplift())
        xs = [p[0] for p in points]
        # Beyond the measured sizes, either way: a convex curve (allocator rounding and
        # fragmentation) lies above any line through its points outside their range.
        beyond = max(x / max(xs), min(xs) / x, 1.0)
        return uplift + 0.05 * math.log2(beyond)

    def _pooled_uplift(self) -> float:
        """Upper quantile of |relative residuals| of every group's fit (the run-to-run noise)."""
        residuals: list[float] = []
        for points in self._measured.values():
            line = self._fit(points)
            if line is None:
                continue
            residuals += [abs(y - line.at(x)) / max(line.at(x), 1.0) for x, y in points]
        if len(residuals) < 3:
            return self._min_uplift
        residuals.sort()
        k = min(len(residuals) - 1, math.ceil(self._quantile * len(residuals)) - 1)
        # In-sample residuals understate the noise of a fit with few points.
        return max(self._min_uplift, residuals[k] * 1.5)

    def _prior_slope(self, params: Mapping[str, Any]) -> float | None:
        if self._prior is None:
            return None
        slope = self._prior.slope(params)
        if slope is None:
            return None
        found = self._calibration()
        return slope * (found[0].slope if found else 1.0)

    def _state(self, params: Mapping[str, Any]) -> float:
        return self._prior.state_bytes(params) if self._prior is not None else 0.0

    def _calibration(self) -> tuple[_Line, float] | None:
        """measured − state ≈ context + factor × (traced − state), over every measured trial the
        prior covers, fitted on relative error; with how far that transfers between groups."""
        if self._prior is None:
            return None
        pairs: dict[tuple[Any, ...], list[tuple[float, float, float]]] = {}
        for key, points in self._measured.items():
            params = dict(zip(self._groups, key, strict=True))
            state = self._state(params)
            for x, y in points:
                traced = self._prior.bytes_at(params, x)
                if traced is not None:
                    pairs.setdefault(key, []).append((traced - state, y - state, y))
        if not pairs:
            return None
        every = [p for group in pairs.values() for p in group]
        line = self._calibrate(every)
        return line, max(self._min_uplift, self._transfer_spread(pairs, line))

    def _calibrate(self, pairs: list[tuple[float, float, float]]) -> _Line:
        """The (context, factor) line through (dynamic traced, dynamic measured, measured)."""
        line = self._fit([(t, d) for t, d, _ in pairs], [1.0 / (y * y) for *_, y in pairs])
        if line is not None:
            return line
        # One traced size measured: a factor on top of the known context.
        traced, dynamic = pairs[0][0], sum(p[1] for p in pairs) / len(pairs)
        factor = max(0.0, dynamic - self._context) / traced if traced > 0 else 1.0
        return _Line(self._context, factor)

    def _transfer_spread(
        self, pairs: dict[tuple[Any, ...], list[tuple[float, float, float]]], line: _Line
    ) -> float:
        """Largest relative error of the calibration on a group it was not fitted on (each
        group left out in turn); in-sample, plus the cold uplift, with a single group."""
        if len(pairs) < 2:
            in_sample = max(abs(d - line.at(t)) / y for t, d, y in next(iter(pairs.values())))
            return in_sample + self._cold_uplift
        worst = 0.0
        for key, held_out in pairs.items():
            rest = [p for k, group in pairs.items() if k != key for p in group]
            other = self._calibrate(rest)
            worst = max(worst, *(abs(d - other.at(t)) / y for t, d, y in held_out))
        return worst

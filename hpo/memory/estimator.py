"""Predicting a trial's peak device memory from its parameters, with an upper bound.

Trials are grouped by the parameters that change memory (the model family); within a group,
memory is fitted in the memory-scaling parameters (batch size, sequence length, …) by
:mod:`hpo.memory.fit`: affine in their product, with a term of one parameter alone or a
quadratic one where the data call for it, monotone in each. A group with measurements at two
or more sizes is fitted from them; with one, the prior's slope (calibrated) extrapolates, else
the upper bound grows in proportion to the size (memory affine in it with a non-negative
intercept grows no faster; the point is halfway from the measured value); with none, the prior,
calibrated on the other groups' measurements (a device factor and a context overhead), or
uncalibrated with a cold uplift.

The upper bound is the point plus a margin from the data's own spread: an upper quantile of
the leave-one-out residuals of every group's fit and of repeated configurations (the
run-to-run noise, blended with a generous default while few are known), plus twice the fit's
own standard error at that configuration (large with few measurements, far outside them),
plus 5 % per doubling beyond the measured sizes (a convex curve lies above any line through
its points outside their range), and outside the measured configurations never below the
fit with every quadratic term the data allow, nor, without a prior, where it is larger than
its group's data in a parameter measured at fewer than three values (which cannot show a
curve), below a smaller configuration's mean grown cubically in it
(:func:`hpo.memory.bounds.unshown_floor`). Runs are the best evidence: no configuration's
upper bound exceeds the mean of the runs of it or of any configuration at least as large in
every scaling parameter (memory is monotone) plus the noise of one run about that mean (the
spread of repeated configurations, and the mean's own error), whatever the fit, and none is
below a run it had; a configuration run more than once has the mean of its runs as its point
and that bound as its upper. An OOM is censored data: that configuration, and every one of
its group at least as large in every scaling parameter, needs more than the bound.

The upper bound is what admission reserves; pre-pruning weighs (``prune_bytes``) the evidence
that a configuration cannot run: the largest mean measured for a configuration it dominates,
an OOM bound, and a fit's point at its optimistic end (less one standard error) plus the
noise of repeated runs, only from a fit with enough configurations to have determined it
(with several scaling parameters, each seen at three values).
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpo.memory.bounds import (
    capped_by_runs,
    dominated_mean,
    dominating_mean,
    unshown,
    unshown_floor,
)
from hpo.memory.fit import GroupFit, Line, Noise, Point, fit_group, pool, repeat_residuals, stale
from hpo.memory.prior import Prior, calibrate

_Z = 2.0  # standard errors of the fit added to the noise quantile
_EXTRAPOLATE = 0.05  # added to the margin per doubling beyond the measured sizes


@dataclass(frozen=True)
class Observation:
    """A finished trial's measured peak, or for an OOM a lower bound of what it needed."""

    params: Mapping[str, Any]
    peak_bytes: float
    censored: bool = False  # True: the trial ran out of memory; it needs more than peak_bytes


class EstimateSource(str, enum.Enum):
    """Where an estimate comes from; stored as the ``est_source`` user attribute."""

    FIT = "fit"  # a fit through two or more sizes of the group
    ONE_POINT = "one-point"  # one size measured, extrapolated (proportionally, or by a prior)
    CALIBRATED_PRIOR = "calibrated-prior"  # the traced prior, calibrated on other groups
    COLD_PRIOR = "cold-prior"  # the traced prior alone, with a cold uplift
    OOM_BOUND = "oom-bound"  # an OOM said it needs more than this
    SETTLED = "settled"  # nothing measured: running trials of its group that settled
    KNOWN = "known"  # given from outside (a benchmark's oracle, a replay's known jobs)

    @property
    def provisional(self) -> bool:
        """Nothing of its group ended yet: only running trials that settled stand behind it."""
        return self is EstimateSource.SETTLED

    @property
    def loose(self) -> bool:
        """An extrapolation from one size without a prior's slope may be far above the truth:
        too loose to give a configuration up for good (it runs and is measured)."""
        return self is EstimateSource.ONE_POINT


@dataclass(frozen=True)
class Found:
    """What measurements or a prior say of a configuration, before the bounds from runs."""

    point_bytes: float
    uplift: float  # the upper estimate is the point times 1 + this
    source: EstimateSource
    prune_bytes: float | None  # the evidence it cannot run (None: the upper estimate)


@dataclass(frozen=True)
class Estimate:
    """Predicted peak device footprint of a trial (bytes) and a bound it should stay under."""

    point_bytes: float
    upper_bytes: float
    source: EstimateSource
    n_measured: int  # measured trials of the same group
    # what a run may reach if the fit is at its optimistic end (its point less one standard
    # error, plus the noise): what pre-pruning holds against the device (None: the upper)
    prune_bytes: float | None = None
    spike_bytes: float = 0.0  # of upper_bytes, a declared spike's upper bound (one per device)
    spike_floor_bytes: float = 0.0  # and its low end: the rest is the steady reservation
    settled: bool = False  # running trials of its group that settled were counted as measured

    def __post_init__(self) -> None:  # a source given by its name ("fit") is the enum's
        object.__setattr__(self, "source", EstimateSource(self.source))

    @property
    def evidence_bytes(self) -> float:
        return self.upper_bytes if self.prune_bytes is None else self.prune_bytes

    @property
    def label(self) -> str:
        """The source as recorded: ``fit+settled`` where settled trials added sizes."""
        plain = self.source is EstimateSource.SETTLED or not self.settled
        return self.source.value if plain else f"{self.source.value}+settled"


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
        self._quantile, self._min_uplift, self._cold_uplift = quantile, min_uplift, cold_uplift
        self._measured: dict[tuple[Any, ...], list[Point]] = defaultdict(list)
        self._bounds: dict[tuple[Any, ...], list[Point]] = defaultdict(list)
        # per group and configuration: measured peaks, and their [sum, count]
        self._configs: dict[tuple[Any, ...], dict[tuple[float, ...], list[float]]] = {}
        self._sums: dict[tuple[Any, ...], dict[tuple[float, ...], list[float]]] = {}
        self._fits: dict[tuple[Any, ...], GroupFit | None] = {}
        self._fitted_n: dict[tuple[Any, ...], int] = {}  # the group's points when fitted
        self._noise: Noise | None = None
        self._noise_n = 0  # measured points when the noise was pooled
        self.version, self._version_n = 0, 0  # changes when predictions may (same rule)
        self._calibrated: tuple[tuple[Line, float] | None] | None = None

    # -- learning ---------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        key, s = self.group_of(obs.params), self.s_of(obs.params)
        if not math.isfinite(obs.peak_bytes) or obs.peak_bytes <= 0:
            return
        if obs.censored:
            self._bounds[key].append((s, float(obs.peak_bytes)))
            self.version += 1
            return
        self._measured[key].append((s, float(obs.peak_bytes)))
        configs = self._configs.setdefault(key, {})
        new_size = s not in configs
        configs.setdefault(s, []).append(float(obs.peak_bytes))
        acc = self._sums.setdefault(key, {}).setdefault(s, [0.0, 0.0])
        acc[0], acc[1] = acc[0] + float(obs.peak_bytes), acc[1] + 1
        # Refit on every new size, else once a group has grown by a twentieth since its fit
        # (every peak while it has fewer than 20): what one more repeat changes is within the
        # noise, and refitting every trial made a long study's cost per trial grow with it.
        n = len(self._measured[key])
        if new_size or stale(n, self._fitted_n.get(key, 0)):
            self._fits.pop(key, None)
        total = self.n_measured_total
        if new_size or stale(total, self._noise_n):
            self._noise, self._calibrated = None, None
        if new_size or stale(total, self._version_n):  # worth sending the workers again
            self.version, self._version_n = self.version + 1, total

    @property
    def has_prior(self) -> bool:
        return self._prior is not None

    @property
    def n_observations(self) -> int:  # measured peaks and OOM bounds learned so far
        return sum(map(len, self._measured.values())) + sum(map(len, self._bounds.values()))

    @property
    def params_needed(self) -> frozenset[str]:
        """The parameters a prediction reads (groups and memory-scaling)."""
        return frozenset(self._scaling + self._groups)

    @property
    def n_measured_total(self) -> int:
        return sum(map(len, self._measured.values()))

    def n_measured(self, params: Mapping[str, Any]) -> int:
        return len(self._measured.get(self.group_of(params), ()))

    def sizes(self, params: Mapping[str, Any]) -> set[tuple[float, ...]]:  # measured in group
        return set(self._configs.get(self.group_of(params), ()))

    def measured_peaks(self, params: Mapping[str, Any]) -> list[float]:
        """Peaks measured for exactly this configuration (its group and scaling values)."""
        return list(self._configs.get(self.group_of(params), {}).get(self.s_of(params), ()))

    def _means(self, key: tuple[Any, ...]) -> list[Point]:
        """The mean measured peak of each configuration of a group (one point each)."""
        return [(sp, total / n) for sp, (total, n) in self._sums.get(key, {}).items()]

    def group_of(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(g) for g in self._groups)

    def s_of(self, params: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(float(params[name]) for name in self._scaling)

    def x_of(self, params: Mapping[str, Any]) -> float:
        return math.prod(self.s_of(params))

    # -- predicting -------------------------------------------------------------------

    def predict(self, params: Mapping[str, Any]) -> Estimate | None:
        """The estimate for ``params``; None when nothing is known about its group yet."""
        key, s = self.group_of(params), self.s_of(params)
        points = self._measured.get(key, [])
        found = self._from_measurements(params, key, s) if points else self._from_prior(params)
        bound = self._oom_bound(key, s)
        if found is None:
            if bound is None:
                return None
            return Estimate(bound, bound * (1 + self._min_uplift), EstimateSource.OOM_BOUND, 0)
        point, source, prune = found.point_bytes, found.source, found.prune_bytes
        upper = point * (1 + max(self._min_uplift, found.uplift))
        fit = self._group_fit(key) if points else None
        if fit is not None and fit.beyond(s) > 0:  # convex growth the F-test let pass
            upper = max(upper, fit.convex_at(s) * (1 + self.noise().quantile))
        ceiling = dominating_mean(self._means(key), s) if fit and fit.below(s) else None
        if ceiling is not None:  # a line through convex data misses small sizes most
            upper = max(upper, ceiling * (1 + self.noise().quantile))
        if self._prior is None:  # growth no fit has seen (a traced prior spans the sizes)
            upper = max(upper, unshown_floor(self._means(key), s))
        repeats = self.measured_peaks(params)
        if len(repeats) >= 2:  # its own runs: their mean and the noise, whatever the fit
            point, upper = sum(repeats) / len(repeats), math.inf
        cap = capped_by_runs(self._configs.get(key, {}), s, self.noise().single, self._min_uplift)
        if cap is not None:  # no more than what it or a larger configuration ran with
            upper = max([min(upper, cap), *repeats])
            point = min(point, upper)
        if bound is not None and prune is not None:
            prune = max(prune, bound)  # it needed more than that, whatever the fit
        if bound is not None and bound > point:
            point, upper = bound, max(upper, bound * (1 + self._min_uplift))
            source = EstimateSource.OOM_BOUND
        return Estimate(point, upper, source, len(points), prune)

    def noise(self) -> Noise:
        """The spread of measured peaks around the fits, pooled over every group; and the
        spread of repeated configurations alone, which no misfit inflates (cached until the
        next peak)."""
        if self._noise is None:
            residuals: list[float] = []
            repeats: list[float] = []
            singles: list[float] = []
            for key, points in self._measured.items():
                fit = self._group_fit(key)
                repeats += repeat_residuals(points)
                singles += repeat_residuals(points, single=True)
                residuals += list(fit.loo) if fit is not None else repeat_residuals(points)
            q, rms, n = pool(residuals, self._quantile)
            pure, single = pool(repeats, self._quantile)[0], pool(singles, self._quantile)[0]
            self._noise = Noise(q, rms, n, pure, single)
            self._noise_n = self.n_measured_total
        return self._noise

    def _group_fit(self, key: tuple[Any, ...]) -> GroupFit | None:
        if key not in self._fits:
            self._fits[key] = fit_group(self._measured.get(key, []))
            self._fitted_n[key] = len(self._measured.get(key, []))
        return self._fits[key]

    def _from_measurements(
        self, params: Mapping[str, Any], key: tuple[Any, ...], s: tuple[float, ...]
    ) -> Found:
        points, noise = self._means(key), self.noise()  # one point per configuration
        fit = self._group_fit(key)
        floor = dominated_mean(points, s)
        if fit is not None:
            point, se = self._extend(fit, params, points, s), noise.rms * fit.rel_se(s)
            margin = noise.quantile + _Z * se + _EXTRAPOLATE * fit.beyond(s)
            # Evidence only from a fit with a configuration more than its terms per extra
            # scaling param (two sizes of a 2-param group say nothing of the other way). In
            # one parameter a line through two sizes lies below a convex curve beyond them;
            # in several, how they combine is assumed until each was seen at enough values.
            if len(points) >= len(fit.terms) + len(s) - 1 and (len(s) < 2 or not unshown(points)):
                floor = max(floor, point * max(0.0, 1 - se) * (1 + noise.pure))
            return Found(point, margin, EstimateSource.FIT, floor)
        # One x measured: extrapolate with the calibrated prior's slope, else proportionally
        # (safe when memory is affine with a non-negative intercept, as it is).
        sums = self._sums[key].values()
        s0, y0 = points[0][0], sum(t for t, _ in sums) / sum(n for _, n in sums)
        x, x0 = math.prod(s), math.prod(s0)
        slope = self._prior_slope(params)
        top = y0 + slope * (x - x0) if slope is not None else y0 * max(1.0, x / x0)
        point = top if slope is not None else (y0 + top) / 2
        # Below the measured size a flat point is safe (memory is monotone).
        down = slope is not None
        beyond = sum(
            math.log2(max(v / m, m / v if down else 1.0, 1.0)) for v, m in zip(s, s0, strict=True)
        )
        margin = noise.quantile + _Z * noise.rms / math.sqrt(len(self._measured[key]))
        if slope is not None:  # the calibrated prior's slope is evidence; proportion is not
            floor = max(floor, point * (1 + noise.pure))
        uplift = top / point * (1 + margin + _EXTRAPOLATE * beyond) - 1
        return Found(point, uplift, EstimateSource.ONE_POINT, floor)

    def _extend(
        self, fit: GroupFit, params: Mapping[str, Any], points: list[Point], s: tuple[float, ...]
    ) -> float:
        """The fit at ``s``; for a fit affine in ``x`` outside the measured ``x``, from the
        nearest end with whichever of the fitted and the calibrated prior's slope predicts
        more (the safe side)."""
        slope, line = self._prior_slope(params), fit.slope
        xs = [math.prod(p[0]) for p in points]
        lo, hi, x = min(xs), max(xs), math.prod(s)
        if slope is None or line is None or lo <= x <= hi:
            return fit.at(s)
        edge = hi if x > hi else lo
        at_edge = fit.coef[0] + line * edge
        steeper, flatter = max(slope, line), min(slope, line)
        return at_edge + (steeper if x > hi else flatter) * (x - edge)

    def _from_prior(self, params: Mapping[str, Any]) -> Found | None:
        traced = self._prior.bytes_at(params, self.x_of(params)) if self._prior else None
        if traced is None:
            return None
        found = self._calibration()
        if found is None:
            return Found(traced + self._context, self._cold_uplift, EstimateSource.COLD_PRIOR, None)
        calibration, spread = found
        # State costs its size; the rest is scaled by the device factor, plus the context.
        state = self._state(params)
        point = state + calibration.at(traced - state)
        # How well the prior transfers between groups bounds how wrong it can be for this
        # one; the noise of a single run comes on top.
        margin = self._min_uplift + spread + self.noise().quantile
        return Found(point, margin, EstimateSource.CALIBRATED_PRIOR, None)

    def _oom_bound(self, key: tuple[Any, ...], s: tuple[float, ...]) -> float | None:
        bounds = [
            y
            for sb, y in self._bounds.get(key, [])
            if all(b <= v for b, v in zip(sb, s, strict=True))
        ]
        return max(bounds) if bounds else None

    def _prior_slope(self, params: Mapping[str, Any]) -> float | None:
        if self._prior is None:
            return None
        slope = self._prior.slope(params)
        if slope is None:
            return None
        found = self._calibration()
        return slope * (found[0].slope if found else 1.0)

    def _state(self, params: Mapping[str, Any]) -> float:  # a traced step's state, if known
        return 0.0 if self._prior is None else self._prior.state_bytes(params)

    def _calibration(self) -> tuple[Line, float] | None:
        """The prior calibrated on the measurements (:func:`hpo.memory.prior.calibrate`),
        cached like the noise."""
        if self._prior is None:
            return None
        if self._calibrated is None:
            found = calibrate(
                self._prior, self._measured, self._groups, self._context, self._min_uplift,
                self._cold_uplift,
            )  # fmt: skip
            self._calibrated = (found,)
        return self._calibrated[0]

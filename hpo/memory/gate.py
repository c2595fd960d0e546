"""The memory-estimate pre-pruner: decide, before a trial runs, whether it can fit at all.

:class:`MemoryGate` owns a :class:`~hpo.memory.estimator.MemoryEstimator` for one study: it
learns from the study's finished trials (``peak_vram_mib``, and OOMs as censored data), and for
each new trial returns a :class:`Verdict`: admit (with the estimate recorded on the trial) or
pre-prune (``end_reason=memory_estimate``). A pre-pruned trial is reported infeasible to the
sampler with ``trial.set_constraint`` (:meth:`MemoryGate.infeasibility`).

The rules, in order:

- **Measured feasibility wins.** A configuration (same group and scaling values) that has run
  with a measured peak within the budget is never pre-pruned, whatever its estimate: at worst
  its upper estimate exceeds the budget and it waits to run alone, with the whole card.
- **Pre-prune only what cannot run even alone**: when the upper estimate exceeds the most a
  trial may hold alone, the largest device's budget plus the margin (the per-process cap a
  lone trial gets, :mod:`hpo.scheduling.admission`). A trial between the budget and that runs
  alone and is measured; an estimate whose only uncertainty is the noise margin never gives a
  configuration that fits up for good.
- **Learn small before large**: without a prior, a group measured at fewer sizes than its fit
  needs cannot tell whether a larger configuration fits; such a configuration waits while a
  smaller one of its group is waiting or running (:meth:`MemoryGate.hold_back`), whose
  measurement may show it cannot fit (pre-pruned, no OOM) or size it.
- **An OOM is evidence only against the trial that caused it**: its bound (peak + the failed
  request) is learned when the trial needed more than its own reservation
  (``vram_reserved_mib``, where recorded), or its message says its own per-process cap
  refused the allocation (:func:`~hpo.memory.oom.hit_own_limit`); an OOM from a card that
  others over-committed (a memory-blind policy) teaches nothing, unless the bound alone
  exceeds the budget.
- **A settled trial stands for its size until it is measured**: a running trial that settled
  (:meth:`MemoryGate.settled`) holds at most what it settled at (its process is capped there),
  so where it settled at a size its group has not measured, its group's trials are estimated
  from the measurements and it, as if measured: the next trial of a new group need not wait
  for the whole card, nor a larger one for the smaller one to end (it is not held back for
  it). Such an estimate admits, never pre-prunes: that stays with the measurements.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr, Decision, EndReason
from hpo.devices import MIB, Device
from hpo.memory.estimator import Estimate, EstimateSource, MemoryEstimator, Observation
from hpo.memory.oom import hit_own_limit, needed_lower_bound
from hpo.memory.prior import Prior

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)


def device_budget(device: Device, margin_frac: float) -> int:
    """Memory trials may hold on ``device``: its capacity less the device margin (0 for none)."""
    return int((device.capacity_bytes or 0) * (1 - margin_frac))


def device_margin(device: Device, margin_frac: float) -> int:
    """The device margin: what a trial's cap allows above its reservation."""
    return int((device.capacity_bytes or 0) * margin_frac)


def lone_cap(budget_bytes: int, device: Device, margin_frac: float) -> int:
    """The most one trial may hold where ``budget_bytes`` of ``device`` are free to it: the
    budget plus the margin (a lone trial's per-process cap)."""
    return budget_bytes + device_margin(device, margin_frac)


@dataclass(frozen=True)
class Verdict:
    """The gate's decision for one trial (admit: it may be placed; or pre-prune), and why."""

    decision: Decision
    reason: str
    estimate: Estimate | None
    budget_bytes: int | None

    def attrs(self) -> dict[str, Any]:
        """User attributes recording the estimate used and the budget it was held against."""
        out: dict[str, Any] = {}
        if self.estimate is not None:
            out[Attr.EST_VRAM_MIB] = round(self.estimate.point_bytes / MIB, 1)
            out[Attr.EST_VRAM_UPPER_MIB] = round(self.estimate.upper_bytes / MIB, 1)
            out[Attr.EST_SOURCE] = self.estimate.label
            out[Attr.EST_N_MEASURED] = self.estimate.n_measured
        if self.budget_bytes is not None:
            out[Attr.VRAM_BUDGET_MIB] = round(self.budget_bytes / MIB, 1)
        return out


class MemoryGate:
    """Pre-prunes trials that cannot fit the largest device; learns from every trial."""

    def __init__(
        self,
        devices: Sequence[Device],
        scaling: Sequence[str],
        groups: Sequence[str],
        margin_frac: float,
        prune: bool = True,
        prior: Prior | None = None,
        context_bytes: float = 0.0,
        **estimator_kwargs: Any,
    ) -> None:
        budgets = [device_budget(d, margin_frac) for d in devices if d.has_memory]
        self.budget_bytes = max(budgets) if budgets else None
        # the most one trial may hold, alone on a device: its budget plus the margin
        alone = [
            lone_cap(device_budget(d, margin_frac), d, margin_frac) for d in devices if d.has_memory
        ]
        self.alone_bytes = max(alone) if alone else None
        self._prune = prune
        self.estimator = MemoryEstimator(
            scaling, groups, prior, context_bytes=context_bytes, **estimator_kwargs
        )
        # declared spikes' sizes (hpo.memory_spike), learned like peaks
        self.spikes = MemoryEstimator(scaling, groups, **estimator_kwargs)
        self._context = context_bytes
        self._settled: dict[int, Observation] = {}  # running trials that settled, by number
        # per group, the estimator with them (None: they add no size), as of what it had learned
        self._views: dict[tuple[Any, ...], MemoryEstimator | None] = {}
        self._views_at = 0

    def __getstate__(self) -> dict[str, Any]:
        # The workers' samplers ask only whether a trial is pre-pruned, which a settled trial
        # never decides: their copies leave the settled trials and their views out.
        return {**self.__dict__, "_settled": {}, "_views": {}}

    @property
    def version(self) -> int:
        """Changes when the gate's decisions may: an OOM bound, a new size, a twentieth more
        peaks (what the workers' copies are sent again for)."""
        return self.estimator.version + self.spikes.version

    @property
    def active(self) -> bool:
        """False on CPU-only runs: there is no device memory to plan."""
        return self.budget_bytes is not None

    def check(self, params: Mapping[str, Any]) -> Verdict:
        if not self.active:
            return Verdict(Decision.ADMIT, "no device memory to plan", None, None)
        estimate = self.estimator.predict(params)
        early = self._provisional(params)
        if estimate is None:
            why = "nothing known yet" if early is None else "a trial of its group settled"
            early = early and self._spiked(params, early)
            return Verdict(Decision.ADMIT, why, early, self.budget_bytes)
        assert self.budget_bytes is not None and self.alone_bytes is not None
        budget = self.budget_bytes
        fitted = [p for p in self.estimator.measured_peaks(params) if p <= budget]
        if fitted:
            why = f"measured {min(fitted) / MIB:.0f} MiB within the budget before"
            return Verdict(Decision.ADMIT, why, self._spiked(params, estimate), budget)
        # A single measurement extrapolated proportionally is a safe bound for admission but
        # too loose to give a configuration up for good: such a trial runs and is measured.
        trusted = not estimate.source.loose or self.estimator.has_prior
        evidence = estimate.evidence_bytes if trusted else (estimate.prune_bytes or 0.0)
        if self._prune and evidence > self.alone_bytes:
            reason = (
                f"estimated {estimate.upper_bytes / MIB:.0f} MiB ({estimate.label}) > "
                f"{self.alone_bytes / MIB:.0f} MiB, the most a trial may hold alone (budget "
                f"{self.budget_bytes / MIB:.0f} MiB + margin)"
            )
            return Verdict(Decision.PRE_PRUNE, reason, estimate, self.budget_bytes)
        if early is not None:  # its group's settled trials add sizes the fit did not have
            estimate = early
        return Verdict(Decision.ADMIT, "fits the budget", self._spiked(params, estimate), budget)

    def _spiked(self, params: Mapping[str, Any], estimate: Estimate) -> Estimate:
        """``estimate`` with the part of it its declared spikes take, where they were
        measured: admission reserves the rest as steady memory plus one spike per device."""
        spike = self.spikes.predict(params) if self.spikes.n_observations else None
        if spike is None:
            return estimate
        room = max(0.0, estimate.upper_bytes - self._context)  # a steady part holds a context
        upper = min(spike.upper_bytes, room)
        floor = min(upper, max(0.0, 2 * spike.point_bytes - spike.upper_bytes))
        return replace(estimate, spike_bytes=upper, spike_floor_bytes=floor)

    def settled(self, number: int, params: Mapping[str, Any], held_bytes: float) -> None:
        """Running trial ``number`` settled: it holds at most ``held_bytes`` from now on (its
        peak and the growth settling allows); until it ends (:meth:`ended`) that is what its
        group's unmeasured trials are estimated from."""
        self._settled[number] = Observation(dict(params), float(held_bytes))
        self._views.clear()

    def ended(self, number: int) -> None:
        """Trial ``number`` ended (its measurement, if any, is observed on its own)."""
        if self._settled.pop(number, None) is not None:
            self._views.clear()

    def _provisional(self, params: Mapping[str, Any]) -> Estimate | None:
        """The estimate from the measurements and the settled running trials of ``params``'s
        group, as if those had been measured (source ``settled`` where nothing was measured,
        else the fit's with ``+settled``); None unless one settled at a size not measured."""
        est = self.estimator
        if not self._settled or not est.params_needed <= params.keys():
            return None
        key, sizes = est.group_of(params), est.sizes(params)
        if self._views_at != est.n_observations:  # it learned since: the views are stale
            self._views, self._views_at = {}, est.n_observations
        if key not in self._views:
            same = self._settled_of(key)
            view = None
            if any(est.s_of(o.params) not in sizes for o in same):
                view = copy.deepcopy(est)
                for obs in same:
                    view.observe(obs)
            self._views[key] = view
        view = self._views[key]
        found = None if view is None else view.predict(params)
        if found is None:
            return None
        source = found.source if sizes else EstimateSource.SETTLED
        return replace(found, source=source, settled=True, prune_bytes=None)

    def _settled_of(self, key: tuple[Any, ...]) -> list[Observation]:
        """The settled running trials of group ``key``."""
        return [o for o in self._settled.values() if self.estimator.group_of(o.params) == key]

    def hold_back(
        self, params: Mapping[str, Any], pending: Iterable[Mapping[str, Any]]
    ) -> str | None:
        """Why ``params`` should wait for a smaller configuration of its group, among
        ``pending`` (waiting or running, not yet measured), to be measured first; None if it
        need not (module docstring)."""
        est = self.estimator
        if not self.active or est.has_prior or not est.params_needed <= params.keys():
            return None
        settled = {est.s_of(o.params) for o in self._settled_of(est.group_of(params))}
        sizes, s = est.sizes(params) | settled, est.s_of(params)
        covered = any(all(a <= b for a, b in zip(s, m, strict=True)) for m in sizes)
        if len(sizes) > len(s) or covered:
            return None  # enough sizes to fit, or no larger than one measured
        group, x = est.group_of(params), est.x_of(params)
        for other in pending:
            if not est.params_needed <= other.keys() or est.group_of(other) != group:
                continue
            if est.x_of(other) < x and est.s_of(other) not in sizes:
                return "waits for a smaller configuration of its group to be measured first"
        return None

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Learn from a finished trial's user attributes (measured peak, or an OOM bound)."""
        peak_mib = attrs.get(Attr.PEAK_VRAM_MIB)
        if EndReason.of(attrs) in (EndReason.OOM, EndReason.CAP_EXCEEDED):
            peak = None if peak_mib is None else float(peak_mib) * MIB
            bound = needed_lower_bound(peak, attrs.get(Attr.ERROR))
            if bound is not None and self._own_oom(bound, attrs):
                self.estimator.observe(Observation(dict(params), bound, censored=True))
            return
        if peak_mib is None or not EndReason.measured_in(attrs):
            return
        self.estimator.observe(Observation(dict(params), float(peak_mib) * MIB))
        spike_mib = attrs.get(Attr.SPIKE_VRAM_MIB)
        if isinstance(spike_mib, (int, float)) and spike_mib > 0:
            self.spikes.observe(Observation(dict(params), float(spike_mib) * MIB))

    def _own_oom(self, bound: float, attrs: Mapping[str, Any]) -> bool:
        """Whether an OOM says something about the trial's own needs (module docstring)."""
        reserved = attrs.get(Attr.VRAM_RESERVED_MIB)
        if reserved is not None:
            return bound > float(reserved) * MIB
        if hit_own_limit(attrs.get(Attr.ERROR)):
            return True
        return self.budget_bytes is not None and bound > self.budget_bytes

    def observe_trials(self, trials: Sequence[FrozenTrial]) -> int:
        """Learn from trials already in the storage; returns how many taught something."""
        before = self.estimator.n_observations
        for trial in trials:
            self.observe(trial.params, trial.user_attrs)
        return self.estimator.n_observations - before

    def infeasibility(self, verdict: Verdict) -> float:
        """The memory constraint of a pre-pruned trial for ``trial.set_constraint`` (> 0: by
        how much, relative to the budget, its upper estimate exceeds the budget)."""
        if verdict.estimate is None or self.budget_bytes is None:
            return 0.0
        return (verdict.estimate.upper_bytes - self.budget_bytes) / self.budget_bytes

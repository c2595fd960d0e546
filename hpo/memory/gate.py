"""The memory-estimate pre-pruner: decide, before a trial runs, whether it can fit at all.

:class:`MemoryGate` owns a :class:`~hpo.memory.estimator.MemoryEstimator` for one study: it
learns from the study's finished trials (``peak_vram_mib``, and OOMs as censored data), and for
each new trial returns an :class:`Admission`: admit (with the estimate recorded on the trial)
or pre-prune (``end_reason=memory_estimate``) when the upper estimate exceeds the per-trial
budget, the largest device's budget (:func:`device_budget`). A pre-pruned trial is reported
infeasible to the sampler with ``trial.set_constraint`` (:meth:`MemoryGate.infeasibility`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.contract import MEASURED, Attr, Decision, EndReason
from hpo.devices import MIB, Device
from hpo.memory.estimator import Estimate, MemoryEstimator, Observation
from hpo.memory.oom import needed_lower_bound
from hpo.memory.prior import Prior

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)


def device_budget(device: Device, margin_frac: float) -> int:
    """Memory trials may hold on ``device``: its capacity less the device margin (0 for none)."""
    return int((device.capacity_bytes or 0) * (1 - margin_frac))


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
            out[Attr.EST_SOURCE] = self.estimate.source
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
        self._prune = prune
        self.estimator = MemoryEstimator(
            scaling, groups, prior, context_bytes=context_bytes, **estimator_kwargs
        )

    @property
    def active(self) -> bool:
        """False on CPU-only runs: there is no device memory to plan."""
        return self.budget_bytes is not None

    def check(self, params: Mapping[str, Any]) -> Verdict:
        if not self.active:
            return Verdict(Decision.ADMIT, "no device memory to plan", None, None)
        estimate = self.estimator.predict(params)
        if estimate is None:
            return Verdict(Decision.ADMIT, "nothing known yet", None, self.budget_bytes)
        assert self.budget_bytes is not None
        # A single measurement extrapolated proportionally is a safe bound for admission but
        # too loose to give a configuration up for good: such a trial runs and is measured.
        trusted = estimate.source != "one-point" or self.estimator.has_prior
        if self._prune and trusted and estimate.upper_bytes > self.budget_bytes:
            reason = (
                f"estimated {estimate.upper_bytes / MIB:.0f} MiB ({estimate.source}) > budget "
                f"{self.budget_bytes / MIB:.0f} MiB"
            )
            return Verdict(Decision.PRE_PRUNE, reason, estimate, self.budget_bytes)
        return Verdict(Decision.ADMIT, "fits the budget", estimate, self.budget_bytes)

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Learn from a finished trial's user attributes (measured peak, or an OOM bound)."""
        peak_mib = attrs.get(Attr.PEAK_VRAM_MIB)
        if attrs.get(Attr.END_REASON) == EndReason.OOM.value:
            peak = None if peak_mib is None else float(peak_mib) * MIB
            bound = needed_lower_bound(peak, attrs.get(Attr.ERROR))
            if bound is not None:
                self.estimator.observe(Observation(dict(params), bound, censored=True))
            return
        if peak_mib is None or attrs.get(Attr.END_REASON) not in MEASURED:
            return
        self.estimator.observe(Observation(dict(params), float(peak_mib) * MIB))

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

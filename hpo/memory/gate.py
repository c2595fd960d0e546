"""The memory-estimate pre-pruner: decide, before a trial runs, whether it can fit at all.

:class:`MemoryGate` owns a :class:`~hpo.memory.estimator.MemoryEstimator` for one study: it
learns from the study's finished trials (``peak_vram_mib``, and OOMs as censored data), and for
each new trial returns an :class:`Admission`: admit (with the estimate recorded on the trial)
or pre-prune (``end_reason=memory_estimate``) when the upper estimate exceeds the per-trial
budget, capacity minus the safety margin. Pre-pruned trials are infeasible to the sampler
through Optuna's constraints: :meth:`constraints` is the sampler's ``constraints_func``.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo.devices import MIB, Device
from hpo.memory.estimator import Estimate, MemoryEstimator, Observation
from hpo.memory.oom import needed_lower_bound
from hpo.memory.prior import Prior

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

logger = logging.getLogger(__name__)


class AdmissionKind(str, enum.Enum):
    ADMIT = "admit"
    PRE_PRUNE = "pre_prune"


@dataclass(frozen=True)
class Admission:
    """The gate's decision for one trial, and why."""

    kind: AdmissionKind
    reason: str
    estimate: Estimate | None
    budget_bytes: int | None

    def attrs(self) -> dict[str, Any]:
        """User attributes recording the estimate used and the budget it was held against."""
        out: dict[str, Any] = {}
        if self.estimate is not None:
            out["est_vram_mib"] = round(self.estimate.point_bytes / MIB, 1)
            out["est_vram_upper_mib"] = round(self.estimate.upper_bytes / MIB, 1)
            out["est_source"] = self.estimate.source
            out["est_n_measured"] = self.estimate.n_measured
        if self.budget_bytes is not None:
            out["vram_budget_mib"] = round(self.budget_bytes / MIB, 1)
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
        capacities = [d.capacity_bytes for d in devices if d.capacity_bytes is not None]
        self.budget_bytes = int(max(capacities) * (1 - margin_frac)) if capacities else None
        self._prune = prune
        self.estimator = MemoryEstimator(
            scaling, groups, prior, context_bytes=context_bytes, **estimator_kwargs
        )

    @property
    def active(self) -> bool:
        """False on CPU-only runs: there is no device memory to plan."""
        return self.budget_bytes is not None

    def check(self, params: Mapping[str, Any]) -> Admission:
        if not self.active:
            return Admission(AdmissionKind.ADMIT, "no device memory to plan", None, None)
        estimate = self.estimator.predict(params)
        if estimate is None:
            return Admission(AdmissionKind.ADMIT, "nothing known yet", None, self.budget_bytes)
        assert self.budget_bytes is not None
        # A single measurement extrapolated proportionally is a safe bound for admission but
        # too loose to give a configuration up for good: such a trial runs and is measured.
        trusted = estimate.source != "one-point" or self.estimator.has_prior
        if self._prune and trusted and estimate.upper_bytes > self.budget_bytes:
            reason = (
                f"estimated {estimate.upper_bytes / MIB:.0f} MiB ({estimate.source}) > budget "
                f"{self.budget_bytes / MIB:.0f} MiB"
            )
            return Admission(AdmissionKind.PRE_PRUNE, reason, estimate, self.budget_bytes)
        return Admission(AdmissionKind.ADMIT, "fits the budget", estimate, self.budget_bytes)

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Learn from a finished trial's user attributes (measured peak, or an OOM bound)."""
        peak_mib = attrs.get("peak_vram_mib")
        if attrs.get("end_reason") == "oom":
            peak = None if peak_mib is None else float(peak_mib) * MIB
            bound = needed_lower_bound(peak, attrs.get("error"))
            if bound is not None:
                self.estimator.observe(Observation(dict(params), bound, censored=True))
            return
        if peak_mib is None or attrs.get("end_reason") not in ("complete", "pruned"):
            return
        self.estimator.observe(Observation(dict(params), float(peak_mib) * MIB))

    def observe_trials(self, trials: Sequence[FrozenTrial]) -> int:
        """Learn from trials already in the storage; returns how many taught something."""
        before = self.estimator.n_observations
        for trial in trials:
            self.observe(trial.params, trial.user_attrs)
        return self.estimator.n_observations - before

    def constraints(self, trial: FrozenTrial) -> Sequence[float]:
        """Optuna ``constraints_func``: > 0 for a trial that cannot fit (pre-pruned or OOM)."""
        if self.budget_bytes is None:
            return (0.0,)
        attrs = trial.user_attrs
        if attrs.get("end_reason") == "memory_estimate":
            need = float(attrs.get("est_vram_upper_mib", 0.0)) * MIB
            return ((need - self.budget_bytes) / self.budget_bytes,)
        peak = attrs.get("peak_vram_mib")
        if peak is None:
            return (0.0,)
        return (min(0.0, (float(peak) * MIB - self.budget_bytes) / self.budget_bytes),)

"""The oracle's memory gate for ``bench.packing``: the workload's truth in place of estimates.

A module of its own, not ``bench.packing``'s ``__main__``, so the supervisor's workers can
unpickle the gate they are sent (they ask it whether a proposal is pre-pruned)."""

from __future__ import annotations

from typing import Any

from hpo.contract import Decision
from hpo.devices import GIB, MIB
from hpo.memory import Estimate, EstimateSource, MemoryGate, Verdict


class TruthGate:
    """The oracle's gate: skips what cannot fit alone by the workload's truth and estimates
    every other trial by its true footprint (and its evaluation's, where it is a spike)."""

    def __init__(self, inner: MemoryGate, workload: Any, cold: bool = False) -> None:
        self._inner, self._wl, self._cold = inner, workload, cold

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def check(self, params: dict[str, Any]) -> Verdict:
        if self._cold:  # the learner: hpo's own verdict while nothing is known of the group
            verdict = self._inner.check(params)
            if verdict.estimate is None:
                return verdict
        budget, alone = self._inner.budget_bytes, self._inner.alone_bytes
        assert alone is not None  # the oracle runs on a card with memory
        upper = true_upper(self._wl, params)
        if upper > alone:  # hpo's own threshold: the most a lone trial may hold
            why = f"cannot fit alone: {upper / MIB:.0f} MiB > {alone / MIB:.0f} MiB"
            return Verdict(Decision.PRE_PRUNE, why, None, budget)
        point = float(self._wl.footprint_bytes(params))
        spike = (
            float(self._wl.eval_extra_bytes(params)) if self._wl.family(params).eval_spike else 0
        )
        estimate = Estimate(
            point, upper, EstimateSource.KNOWN, 0, spike_bytes=spike, spike_floor_bytes=spike
        )
        return Verdict(Decision.ADMIT, "oracle", estimate, budget)


def true_upper(workload: Any, params: dict[str, Any]) -> float:
    """The most a run of ``params`` holds by the workload: its peak with the worst noise, its
    evaluation's extra memory, and the context."""
    peak = workload.peak_bytes(params) * (1 + workload.noise_frac)
    return peak + workload.eval_extra_bytes(params) + workload.device.context_gib * GIB

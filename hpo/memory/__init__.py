"""Knowing a trial's memory before it runs: estimator, prior, and the pre-pruning gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpo.memory.estimator import Estimate, EstimateSource, MemoryEstimator, Observation
from hpo.memory.gate import MemoryGate, Verdict, device_budget, device_margin, lone_cap
from hpo.memory.prior import Prior, build_prior

if TYPE_CHECKING:
    from hpo.config.settings import Settings
    from hpo.devices import Device

__all__ = [
    "Estimate",
    "EstimateSource",
    "MemoryEstimator",
    "MemoryGate",
    "Observation",
    "Prior",
    "Verdict",
    "build_gate",
    "device_budget",
    "device_margin",
    "lone_cap",
]


def build_gate(settings: Settings, devices: Sequence[Device]) -> MemoryGate:
    """The study's gate: budget from the devices, prior traced when there is device memory."""
    from hpo.devices import context_bytes

    mem, study = settings.memory, settings.study
    prior = None
    if any(d.has_memory for d in devices):
        prior = build_prior(
            settings.objective_cfg, study.scaling, study.groups, mem.trace_timeout_s
        )
    return MemoryGate(
        devices,
        study.scaling,
        study.groups,
        mem.device_margin_frac,
        prune=mem.prune,
        prior=prior,
        context_bytes=context_bytes(list(devices)),
        quantile=mem.quantile,
        min_uplift=mem.min_uplift,
        cold_uplift=mem.cold_uplift,
    )

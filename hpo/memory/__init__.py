"""Knowing a trial's memory before it runs: estimator, prior, and the pre-pruning gate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hpo.memory.estimator import Estimate, MemoryEstimator, Observation
from hpo.memory.gate import Admission, AdmissionKind, MemoryGate
from hpo.memory.prior import Prior, build_prior
from hpo.memory.retry import retry_with_half_batch

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from hpo.devices import Device

__all__ = [
    "Admission",
    "AdmissionKind",
    "Estimate",
    "MemoryEstimator",
    "MemoryGate",
    "Observation",
    "Prior",
    "build_gate",
    "context_bytes",
    "memory_groups",
    "retry_with_half_batch",
]

logger = logging.getLogger(__name__)

DEFAULT_CUDA_CONTEXT_BYTES = 512 * 1024 * 1024  # a torch CUDA context before calibration


def memory_groups(cfg: DictConfig) -> list[str]:
    """Params that change memory: declared, or every categorical param that does not scale."""
    declared = cfg.study.memory.groups
    if declared is not None:
        return list(declared)
    scaling = set(cfg.study.memory.scaling)
    return [n for n, d in cfg.study.space.items() if d.type == "categorical" and n not in scaling]


def context_bytes(devices: Sequence[Device]) -> int:
    """Device memory a worker process holds once it touched a device (0 without device memory)."""
    from hpo.devices import SimulatedGpu

    sims = [d for d in devices if isinstance(d, SimulatedGpu)]
    if sims:
        return sims[0].context_bytes
    return DEFAULT_CUDA_CONTEXT_BYTES if any(d.has_memory for d in devices) else 0


def build_gate(cfg: DictConfig, devices: Sequence[Device]) -> MemoryGate:
    """The study's gate: budget from the devices, prior traced when there is device memory."""
    from omegaconf import OmegaConf

    mem = cfg.memory
    scaling, groups = list(cfg.study.memory.scaling), memory_groups(cfg)
    has_memory = any(d.capacity_bytes is not None for d in devices)
    prior = None
    if has_memory:
        container = OmegaConf.to_container(cfg, resolve=True)
        prior = build_prior(container, scaling, groups, float(mem.trace_timeout_s))  # type: ignore[arg-type]
    context = context_bytes(devices)
    return MemoryGate(
        devices,
        scaling,
        groups,
        float(mem.margin_frac),
        prune=bool(mem.prune),
        prior=prior,
        context_bytes=context,
        quantile=float(mem.quantile),
        min_uplift=float(mem.min_uplift),
        cold_uplift=float(mem.cold_uplift),
    )

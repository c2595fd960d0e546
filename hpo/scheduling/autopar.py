"""``par=auto``: how many trials may run at once, from RAM, device memory and learned footprints.

The cap is the smallest of: the trials that fit the host's free RAM at the largest RSS a trial
has needed so far (``memory.trial_ram_gib`` before any); the trials that fit each device's budget
at the smallest footprint the estimator predicts for any configuration (a context overhead plus
the trial's own memory; no limit from a device while nothing is known); on CPU-only runs, the
CPUs; and ``memory.max_par``. Admission still decides, trial by trial, what really runs: the cap
only bounds the worker processes, which is why it errs on the generous side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpo.devices import MIB, Device
from hpo.execution.procs import available_cpus
from hpo.memory import MemoryGate
from hpo.memory.prior import grid_points
from hpo.scheduling.ram import RamBudget


def auto_par(
    devices: Sequence[Device],
    gate: MemoryGate,
    ram: RamBudget,
    space: Mapping[str, Mapping[str, Any]],
    memory_params: tuple[Sequence[str], Sequence[str]],
    max_par: int,
) -> tuple[int, str]:
    """The worker cap and a one-line account of where it comes from.

    ``memory_params`` is ``(scaling, groups)``: the parameters memory depends on.
    """
    need = max(1, ram.largest_need())
    limits = {"max_par": max_par, "RAM": max(1, ram.free() // need)}
    memory = [d for d in devices if d.capacity_bytes is not None]
    if not memory:
        limits["CPUs"] = available_cpus()
    smallest = _smallest_footprint(gate, space, *memory_params)
    if memory and smallest:
        budget = gate.budget_bytes or 0
        limits["device memory"] = len(memory) * max(1, int(budget // smallest))
    name = min(limits, key=lambda k: limits[k])
    par = max(1, int(limits[name]))
    detail = ", ".join(f"{k} {v}" for k, v in limits.items())
    foot = f"; smallest trial ≈ {smallest / MIB:.0f} MiB" if smallest else ""
    return par, f"par=auto -> {par} (limited by {name}: {detail}{foot})"


def _smallest_footprint(
    gate: MemoryGate,
    space: Mapping[str, Mapping[str, Any]],
    scaling: Sequence[str],
    groups: Sequence[str],
) -> float | None:
    """The smallest upper estimate over every group at its lowest scaling values, if known."""
    points = grid_points(space, scaling, groups)
    uppers = [e.upper_bytes for p in points if (e := gate.estimator.predict(p)) is not None]
    return min(uppers) if uppers else None

"""Host memory for admission: a trial starts only when its predicted RAM fits what is free.

A trial's RAM need is learned like its device memory: an estimator over the same groups and
scaling parameters, fed with the ``peak_rss_mib`` every trial records (the worker's RSS with its
children). Before anything is measured a trial is assumed to need ``memory.trial_ram_gib``.
What is free is the host's available memory, less what the running trials are still expected to
grow by (their reservation minus what their worker holds now), less the host-RAM margin
(``memory.ram_margin_frac``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psutil

from hpo.contract import Attr, EndReason
from hpo.devices import GIB, MIB
from hpo.memory import MemoryEstimator, Observation


class RamBudget:
    """Learns trials' peak RSS and checks that a new one fits the host's free memory."""

    def __init__(
        self, scaling: Sequence[str], groups: Sequence[str], default_gib: float, margin_frac: float
    ) -> None:
        self.estimator = MemoryEstimator(scaling, groups)
        self._default = int(default_gib * GIB)
        self._margin_frac = margin_frac
        self._running: dict[int, tuple[int, int]] = {}  # trial number -> (worker pid, bytes)
        self._peaks: list[float] = []  # measured peak RSS of finished trials

    def need(self, params: Mapping[str, Any]) -> int:
        """Predicted peak RSS of a trial with ``params`` (upper estimate, or the default)."""
        estimate = self.estimator.predict(params)
        return self._default if estimate is None else int(estimate.upper_bytes)

    def largest_need(self) -> int:
        """The largest RSS any measured trial needed (the default before any)."""
        return int(max(self._peaks)) if self._peaks else self._default

    def free(self) -> int:
        """Bytes a new trial may still take: available memory, less promised growth and margin."""
        vm = psutil.virtual_memory()
        growth = sum(max(0, need - _rss(pid)) for pid, need in self._running.values())
        return int(vm.available - growth - vm.total * self._margin_frac)

    def fits(self, params: Mapping[str, Any], worker_pid: int) -> tuple[bool, str]:
        need = self.need(params) - _rss(worker_pid)
        free = self.free()
        if need <= free:
            return True, ""
        return False, f"needs {need / MIB:.0f} MiB more RAM, {max(free, 0) / MIB:.0f} MiB free"

    def hold(self, trial_number: int, params: Mapping[str, Any], worker_pid: int) -> None:
        self._running[trial_number] = (worker_pid, self.need(params))

    def release(self, trial_number: int) -> None:
        self._running.pop(trial_number, None)

    def observe(self, params: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        peak = attrs.get(Attr.PEAK_RSS_MIB)
        if peak is not None and EndReason.measured_in(attrs):
            self.estimator.observe(Observation(dict(params), float(peak) * MIB))
            self._peaks.append(float(peak) * MIB)


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, ValueError):
        return 0

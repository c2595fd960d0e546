"""Declared memory spikes: ``with hpo.memory_spike(nbytes):`` marks a short transient.

Inside the block the objective may hold up to ``nbytes`` more device memory for a moment (an
evaluation's buffers, a distance transform over a batch). The spikes of the trials on one
device never overlap: each holds the device's spike lock (a file lock, so across worker
processes and supervisors on the host) while its block runs. Admission can therefore reserve
each trial's steady footprint plus one spike per device instead of every trial's peak
(:mod:`hpo.scheduling.admission`).

The runner records what it measured (:meth:`SpikeLog.attrs`): ``steady_vram_mib``, the peak
outside spikes; ``spike_vram_mib``, the most a spike added to what the trial held when it
began; ``spike_wait_s``, the time spent waiting for other trials' spikes. The memory gate
learns spike sizes from them. Outside the runner, or on a device without memory, the block
just runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr
from hpo.devices import MIB
from hpo.execution.context import current_context

if TYPE_CHECKING:
    from hpo.devices import Device

_PEAKS = (Attr.PEAK_VRAM_MIB, Attr.PEAK_VRAM_ALLOCATED_MIB, Attr.PEAK_VRAM_RESERVED_MIB)


@dataclass
class SpikeLog:
    """One trial's spikes, kept by the runner: peaks outside and inside them."""

    steady_mib: float = 0.0
    spike_mib: float = 0.0
    waited_s: float = 0.0
    count: int = 0
    peaks: dict[str, float] = field(default_factory=dict)  # device peaks of closed windows

    def close_window(self, device: Device, spike_base: int | None = None) -> None:
        """End a window of the trial (steady, or a spike that began at ``spike_base`` bytes):
        keep its peaks, and start the next from what is held now."""
        peaks = device.peak_attrs(None)
        top = peaks.get(Attr.PEAK_VRAM_MIB)
        for key in _PEAKS:
            if key in peaks:
                self.peaks[key] = max(self.peaks.get(key, 0.0), float(peaks[key]))
        if top is not None and spike_base is None:
            self.steady_mib = max(self.steady_mib, float(top))
        elif top is not None:
            self.spike_mib = max(self.spike_mib, float(top) - (spike_base or 0) / MIB)
        device.reset_peaks()

    def attrs(self, measured: dict[str, Any]) -> dict[str, Any]:
        """The trial's attributes: ``measured`` (the probe's, whose device peaks cover only
        the window after the last spike) merged with the spikes' windows."""
        if not self.count:
            return measured
        out = dict(measured)
        tail = measured.get(Attr.PEAK_VRAM_MIB)
        for key, value in self.peaks.items():
            out[key] = round(max(value, float(measured.get(key, 0.0))), 1)
        out[Attr.STEADY_VRAM_MIB] = round(max(self.steady_mib, float(tail or 0.0)), 1)
        out[Attr.SPIKE_VRAM_MIB] = round(max(0.0, self.spike_mib), 1)
        out[Attr.SPIKE_WAIT_S] = round(self.waited_s, 3)
        return out


@contextlib.contextmanager
def memory_spike(nbytes: int) -> Iterator[None]:
    """Run the block as a declared memory spike of up to ``nbytes`` (module docstring)."""
    if nbytes < 0:
        raise ValueError(f"memory_spike: nbytes must be >= 0, got {nbytes}")
    ctx = current_context()
    device, log = ctx.handle, ctx.spikes
    path = device.spike_lock_path() if device is not None and device.has_memory else None
    if device is None or log is None or path is None:
        yield
        return
    asked = time.monotonic()
    with open(path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            log.waited_s += time.monotonic() - asked
            log.count += 1
            log.close_window(device)
            base = device.held_bytes() or 0
            try:
                yield
            finally:
                log.close_window(device, spike_base=base)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

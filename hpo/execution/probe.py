"""Peak memory of a trial: RSS of the worker and its children, and the device's VRAM peaks.

A sampling thread adds up the RSS of the worker and every descendant (DataLoader workers) and
asks the trial's device what those processes hold on it (NVML per-process memory on NVIDIA
GPUs). The kernel's own high-water mark of the worker (``VmHWM``, reset at the start of each
trial) catches spikes of the worker that fall between two samples. Finding the descendants reads
every process of the machine (milliseconds), so it is done every ``_CHILDREN_EVERY_S``, not at
every sample: a child that lives for less than that may be missed (DataLoader workers live for
an epoch or more). The VRAM user attributes
come from the device (:meth:`hpo.devices.Device.peak_attrs`): torch's peaks on CUDA, the card's
own ledger on a simulated GPU, none on the CPU.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psutil

from hpo.contract import Attr
from hpo.devices import MIB

if TYPE_CHECKING:
    from hpo.devices import Device

logger = logging.getLogger(__name__)

_CHILDREN_EVERY_S = 0.25  # how often the sampler looks for new descendants


class MemoryProbe:
    """Context manager measuring the peaks of one trial; read them with :meth:`attrs`."""

    def __init__(self, device: Device, interval_s: float = 0.02) -> None:
        self._device = device
        self._interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss_peak = 0
        self._device_peak: int | None = None
        self.device_grew_at: float | None = None  # monotonic time its device memory last grew
        self._children: list[psutil.Process] = []
        self._children_at = -math.inf  # monotonic time of the last search for descendants
        self._own_peak_known = False  # whether the kernel keeps this trial's peak RSS (VmHWM)

    def __enter__(self) -> MemoryProbe:
        self._own_peak_known = _reset_high_water_mark()
        self._device.reset_peaks()
        self._children_at = time.monotonic()  # no children yet: the trial starts them
        self._sample()
        self._thread = threading.Thread(target=self._run, name="hpo-memory-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        if now - self._children_at >= _CHILDREN_EVERY_S:
            self._children_at = now
            try:
                self._children = self._proc.children(recursive=True)
            except psutil.Error:
                self._children = []
        if not self._children and not self._device.has_memory and self._own_peak_known:
            return  # nothing to add: the worker's own peak is the kernel's high-water mark
        procs = [self._proc, *self._children]
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that just exited
                continue
        self._rss_peak = max(self._rss_peak, total)
        used = self._device.process_bytes({p.pid for p in procs})
        if used is not None and used > (self._device_peak or 0):
            self._device_peak, self.device_grew_at = used, now

    def attrs(self) -> dict[str, Any]:
        """User attributes (docs/architecture.md, "Contracts"): ``peak_rss_mib`` always, VRAM keys
        from the device."""
        peak_rss = max(self._rss_peak, _high_water_mark() or 0)
        return {
            Attr.PEAK_RSS_MIB: round(peak_rss / MIB, 1),
            **self._device.peak_attrs(self._device_peak),
        }


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); False if it cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _high_water_mark() is not None


def _high_water_mark() -> int | None:
    """Peak RSS of this process since the last reset, in bytes (Linux), else None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None

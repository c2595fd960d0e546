"""Peak memory of a trial: RSS of the worker and its children, and the device's VRAM peaks.

A sampling thread adds up the RSS of the worker and every descendant (DataLoader workers) and
asks the trial's device what those processes hold on it (NVML per-process memory on NVIDIA
GPUs). The kernel's own high-water mark of the worker (``VmHWM``, reset at the start of each
trial) catches spikes of the worker that fall between two samples. The VRAM user attributes
come from the device (:meth:`hpo.devices.Device.peak_attrs`): torch's peaks on CUDA, the card's
own ledger on a simulated GPU, none on the CPU.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psutil

from hpo.contract import Attr
from hpo.devices import MIB

if TYPE_CHECKING:
    from hpo.devices import Device

logger = logging.getLogger(__name__)


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

    def __enter__(self) -> MemoryProbe:
        _reset_high_water_mark()
        self._device.reset_peaks()
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
        procs = [self._proc]
        try:
            procs += self._proc.children(recursive=True)
        except psutil.Error:
            pass
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that just exited
                continue
        self._rss_peak = max(self._rss_peak, total)
        used = self._device.process_bytes({p.pid for p in procs})
        if used is not None:
            self._device_peak = max(self._device_peak or 0, used)

    def attrs(self) -> dict[str, Any]:
        """User attributes of DESIGN.md: ``peak_rss_mib`` always, VRAM keys from the device."""
        peak_rss = max(self._rss_peak, _high_water_mark() or 0)
        return {
            Attr.PEAK_RSS_MIB: round(peak_rss / MIB, 1),
            **self._device.peak_attrs(self._device_peak),
        }


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_high_water_mark() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


def _high_water_mark() -> int | None:
    """Peak RSS of this process since the last reset, in bytes (Linux), else None."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None

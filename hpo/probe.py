"""Peak memory of a trial: RSS of the worker and its children, and on CUDA the VRAM peaks.

On a simulated card the VRAM peaks are the card's own record of this process.

A sampling thread adds up the RSS of the worker and every descendant (DataLoader workers) and,
once the trial has touched CUDA, asks NVML for the per-process device memory. The kernel's own
high-water mark of the worker (``VmHWM``, reset at the start of each trial) catches spikes of
the worker that fall between two samples. torch is never imported here: CUDA figures are read
only when the objective itself initialised CUDA.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from hpo.devices import simulated

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


class MemoryProbe:
    """Context manager measuring the peaks of one trial; read them with :meth:`attrs`."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self._interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss_peak = 0
        self._nvml_peak: int | None = None
        self._nvml: _NvmlReader | None = None

    def __enter__(self) -> MemoryProbe:
        _reset_high_water_mark()
        sim = simulated.active()
        if sim is not None:
            sim.reset_peak()
        torch = _cuda_torch()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()
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
        if self._nvml is None and _cuda_torch() is not None:
            self._nvml = _NvmlReader.open()
        if self._nvml is not None and self._nvml.ok:
            used = self._nvml.used_bytes({p.pid for p in procs})
            if used is not None:
                self._nvml_peak = max(self._nvml_peak or 0, used)

    def attrs(self) -> dict[str, Any]:
        """User attributes of DESIGN.md: ``peak_rss_mib`` always, VRAM keys only on CUDA."""
        peak_rss = max(self._rss_peak, _high_water_mark() or 0)
        out: dict[str, Any] = {"peak_rss_mib": round(peak_rss / MIB, 1)}
        sim = simulated.active()
        peaks = sim.peaks() if sim is not None else None
        if peaks is not None:  # a simulated card: its ledger is the device's own count
            out["peak_vram_allocated_mib"] = round(peaks["allocated"], 1)
            out["peak_vram_reserved_mib"] = round(peaks["allocated"], 1)
            out["peak_vram_mib"] = round(peaks["footprint"], 1)
            return out
        torch = _cuda_torch()
        if torch is not None:
            reserved = torch.cuda.max_memory_reserved()
            out["peak_vram_allocated_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
            out["peak_vram_reserved_mib"] = round(reserved / MIB, 1)
            # NVML's per-process figure includes the CUDA context; without it (some
            # containers hide other PID namespaces) the reserved peak is the best lower bound.
            device_bytes = self._nvml_peak if self._nvml_peak is not None else reserved
            out["peak_vram_mib"] = round(device_bytes / MIB, 1)
        return out


def _cuda_torch() -> Any | None:
    """torch, if the objective imported it and initialised CUDA in this process."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch if torch.cuda.is_initialized() else None
    except Exception:  # a half-imported or broken torch must not fail the trial
        return None


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


class _NvmlReader:
    """Per-process device memory from NVML, summed over the given PIDs and all GPUs."""

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self._nvml = nvml
        self._handles = handles
        self.ok = bool(handles)

    @classmethod
    def open(cls) -> _NvmlReader:
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            return cls(pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)])
        except Exception as e:  # no driver, no library: the VRAM figure falls back
            logger.debug("NVML unavailable: %s", e)
            return cls(None, [])

    def used_bytes(self, pids: set[int]) -> int | None:
        total, seen = 0, False
        for handle in self._handles:
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:
                self.ok = False
                return None
            for proc in procs:
                if proc.pid in pids and proc.usedGpuMemory is not None:
                    total += int(proc.usedGpuMemory)
                    seen = True
        return total if seen else None

"""NVIDIA GPUs: capacity, use and utilisation through NVML (nvidia-ml-py), and in a worker the
trial's peaks and cap through the torch the objective imported.

torch is never imported here: its CUDA figures are read only when the objective itself
initialised CUDA in the worker (``sys.modules``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from hpo.contract import Attr
from hpo.devices._base import MIB, Device, DeviceSnapshot, capped

logger = logging.getLogger(__name__)

DEFAULT_CUDA_CONTEXT_BYTES = 512 * MIB  # a torch CUDA context before calibration


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError …
        logger.debug("NVML unavailable: %s", e)
        return None


def nvidia_count() -> int:
    """Number of NVIDIA GPUs NVML sees (0 without a driver)."""
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return 0


class NvidiaDevice(Device):
    """GPU ``index`` as NVML sees it; ``capacity_gib`` makes hpo plan as if it were smaller."""

    def __init__(self, index: int, capacity_gib: float | None = None) -> None:
        nvml = _nvml()
        if nvml is None:
            raise RuntimeError("NVML is not available: no NVIDIA driver on this machine")
        if not 0 <= index < nvml.nvmlDeviceGetCount():
            raise ValueError(f"GPU index must be in [0, {nvml.nvmlDeviceGetCount()}), got {index}")
        self._nvml = nvml
        self._index = index
        self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        total = int(nvml.nvmlDeviceGetMemoryInfo(self._handle).total)
        self._capacity = capped(total, capacity_gib)

    @property
    def label(self) -> str:
        return f"cuda:{self._index}"

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def snapshot(self) -> DeviceSnapshot:
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        return DeviceSnapshot(self.label, self._capacity, int(mem.used), util.gpu / 100.0)

    @property
    def context_bytes(self) -> int:
        return DEFAULT_CUDA_CONTEXT_BYTES

    def foreign_bytes(self, own_pids: Collection[int]) -> int | None:
        """NVML's per-process memory on this GPU of the processes that run in this PID
        namespace and are not hpo's. A process NVML names by a PID this namespace does not
        have (another container, or ours seen from the host) is not counted: whose it is
        cannot be told, so the margin covers it. None when NVML cannot list processes."""
        nvml, held = self._nvml, 0
        try:
            procs = [
                *nvml.nvmlDeviceGetComputeRunningProcesses(self._handle),
                *nvml.nvmlDeviceGetGraphicsRunningProcesses(self._handle),
            ]
        except Exception as e:  # not supported, or no permission
            logger.debug("NVML process list unavailable: %s", e)
            return None
        seen: set[int] = set()
        for proc in procs:
            if proc.pid in own_pids or proc.pid in seen or not _local(proc.pid):
                continue
            seen.add(proc.pid)
            held += int(proc.usedGpuMemory or 0)
        return held

    def cap_process(self, cap_bytes: int | None) -> None:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return  # the objective did not bring torch: nothing to cap yet
        total = torch.cuda.get_device_properties(0).total_memory
        if cap_bytes is None:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
            return
        # The fraction caps torch's allocator, which does not hold the CUDA context.
        allocator = max(cap_bytes - DEFAULT_CUDA_CONTEXT_BYTES, cap_bytes // 2)
        torch.cuda.set_per_process_memory_fraction(min(1.0, allocator / total), 0)

    def reset_peaks(self) -> None:
        torch = cuda_torch()
        if torch is not None:
            torch.cuda.reset_peak_memory_stats()

    def held_bytes(self) -> int | None:
        torch = cuda_torch()
        if torch is None:
            return 0  # CUDA untouched: nothing held
        return int(torch.cuda.memory_reserved()) + DEFAULT_CUDA_CONTEXT_BYTES

    def spike_lock_path(self) -> Path | None:
        """One lock file per physical GPU (its NVML UUID) in the temporary directory."""
        uuid = self._nvml.nvmlDeviceGetUUID(self._handle)
        name = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        return Path(tempfile.gettempdir()) / f"hpo-spike-{name}.lock"

    def process_bytes(self, pids: set[int]) -> int | None:
        """Per-process device memory (NVML, all GPUs) of ``pids``, once CUDA is in use."""
        if cuda_torch() is None:
            return None
        total, seen = 0, False
        try:
            for index in range(self._nvml.nvmlDeviceGetCount()):
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid in pids and proc.usedGpuMemory is not None:
                        total += int(proc.usedGpuMemory)
                        seen = True
        except Exception as e:  # some containers hide other processes: fall back to torch's
            logger.debug("NVML per-process memory unavailable: %s", e)
            return None
        return total if seen else None

    def peak_attrs(self, sampled_peak: int | None) -> dict[str, Any]:
        torch = cuda_torch()
        if torch is None:
            return {}  # the trial never used CUDA
        reserved = torch.cuda.max_memory_reserved()
        # NVML's per-process figure includes the CUDA context; without it (some containers
        # hide other PID namespaces) the reserved peak is the best lower bound.
        footprint = sampled_peak if sampled_peak is not None else reserved
        return {
            Attr.PEAK_VRAM_ALLOCATED_MIB: round(torch.cuda.max_memory_allocated() / MIB, 1),
            Attr.PEAK_VRAM_RESERVED_MIB: round(reserved / MIB, 1),
            Attr.PEAK_VRAM_MIB: round(footprint / MIB, 1),
        }

    def release_cached(self) -> None:
        torch = cuda_torch()
        if torch is not None:
            torch.cuda.empty_cache()


def _local(pid: int) -> bool:
    """Whether ``pid`` is a process of this PID namespace."""
    import psutil

    return bool(psutil.pid_exists(pid))


def cuda_torch() -> Any | None:
    """torch, if the objective imported it and initialised CUDA in this process."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch if torch.cuda.is_initialized() else None
    except Exception:  # a half-imported or broken torch must not fail the trial
        return None

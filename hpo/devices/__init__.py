"""Devices trials run on: NVIDIA GPUs, the CPU, and simulated GPUs, behind one interface."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hpo.devices._base import GIB, MIB, Device, DeviceSnapshot
from hpo.devices.cpu import CpuDevice
from hpo.devices.nvidia import DEFAULT_CUDA_CONTEXT_BYTES, NvidiaDevice, nvidia_count
from hpo.devices.simulated import SimulatedGpu, SimulatedGpuSpec, SimulatedOutOfMemoryError

if TYPE_CHECKING:
    from hpo.config.settings import DeviceSettings

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CUDA_CONTEXT_BYTES",
    "GIB",
    "MIB",
    "CpuDevice",
    "Device",
    "DeviceSnapshot",
    "NvidiaDevice",
    "SimulatedGpu",
    "SimulatedGpuSpec",
    "SimulatedOutOfMemoryError",
    "context_bytes",
    "nvidia_count",
    "open_device",
    "open_devices",
]


def open_devices(settings: DeviceSettings, readonly: bool = False) -> list[Device]:
    """The devices the study's trials run on, as ``study.device`` and ``memory`` say.

    ``readonly`` opens simulated cards for reading only (the look commands write nothing).
    """
    if settings.kind == "sim":
        from hpo.sim.workload import load_workload

        if settings.workload is None or settings.sim_state_dir is None:
            raise ValueError("study.device=sim needs a workload file and a state directory")
        wl = load_workload(settings.workload)
        return [
            SimulatedGpu(i, wl.device, settings.sim_state_dir, settings.capacity_gib, readonly)
            for i in range(wl.device_count)
        ]
    if settings.kind in ("cuda", "auto"):
        count = nvidia_count()
        if count:
            return [NvidiaDevice(i, settings.capacity_gib) for i in range(count)]
    return [CpuDevice()]


def open_device(label: str, settings: DeviceSettings) -> Device:
    """In a worker: the device ``label`` (``cpu``, ``cuda:N``, ``sim:N``) its trials run on."""
    if label == "cpu":
        return CpuDevice()
    devices = open_devices(settings)
    for device in devices:
        if device.label == label:
            return device
    if label.startswith("cuda:"):  # CUDA without NVML: the trial runs, unmeasured and uncapped
        logger.warning("NVML does not see %s: its trials run without VRAM figures or cap", label)
        return CpuDevice()
    raise ValueError(f"no device {label!r} (there are {', '.join(d.label for d in devices)})")


def context_bytes(devices: list[Device]) -> int:
    """Device memory a worker holds once it touched a device (0 without device memory)."""
    return max((d.context_bytes for d in devices if d.has_memory), default=0)

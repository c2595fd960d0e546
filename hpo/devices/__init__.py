"""Devices trials run on: NVIDIA GPUs, the CPU, and simulated GPUs, behind one interface."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpo.devices import simulated
from hpo.devices._base import GIB, MIB, Device, DeviceSnapshot
from hpo.devices.cpu import CpuDevice
from hpo.devices.nvidia import NvidiaDevice, nvidia_count
from hpo.devices.simulated import SimulatedGpu, SimulatedGpuSpec, SimulatedOutOfMemoryError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "GIB",
    "MIB",
    "CpuDevice",
    "Device",
    "DeviceSnapshot",
    "NvidiaDevice",
    "SimulatedGpu",
    "SimulatedGpuSpec",
    "SimulatedOutOfMemoryError",
    "attach_worker",
    "nvidia_count",
    "open_devices",
    "sim_state_dir",
]


def sim_state_dir(cfg: DictConfig) -> Path:
    """Where the simulated cards of a study keep their ledgers."""
    return Path(cfg.storage.dir) / f"{cfg.study.name}.sim"


def open_devices(cfg: DictConfig) -> list[Device]:
    """The devices the study's trials run on, as ``study.device`` and ``memory`` say."""
    kind = cfg.study.device
    capacity_gib = cfg.memory.capacity_gib
    if kind == "sim":
        from hpo.sim.workload import load_workload

        wl = load_workload(str(cfg.study.workload))
        state = sim_state_dir(cfg)
        return [SimulatedGpu(i, wl.device, state, capacity_gib) for i in range(wl.device_count)]
    if kind in ("cuda", "auto"):
        count = nvidia_count()
        if count:
            return [NvidiaDevice(i, capacity_gib) for i in range(count)]
    return [CpuDevice()]


def attach_worker(cfg: DictConfig, label: str) -> None:
    """In a worker: make the simulated card ``label`` (``sim:N``) this process's device."""
    if not label.startswith("sim:"):
        simulated.activate(None)
        return
    index = int(label.split(":", 1)[1])
    devices = open_devices(cfg)
    if not 0 <= index < len(devices):
        raise ValueError(f"simulated device {label!r} does not exist ({len(devices)} cards)")
    device = devices[index]
    assert isinstance(device, SimulatedGpu)
    simulated.activate(device)

"""One contract every device implementation passes, and the simulated card's own behaviour."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest

from hpo.contract import EndReason
from hpo.devices import (
    GIB,
    CpuDevice,
    Device,
    NvidiaDevice,
    SimulatedGpu,
    SimulatedGpuSpec,
    SimulatedOutOfMemoryError,
    nvidia_count,
)
from hpo.execution.runner import classify_exception


def _sim(tmp: Path, capacity_gib: float | None = None) -> SimulatedGpu:
    return SimulatedGpu(0, SimulatedGpuSpec(8.0, 0.5), tmp, capacity_gib)


def _devices(tmp: Path) -> list[Device]:
    devices: list[Device] = [CpuDevice(), _sim(tmp)]
    if nvidia_count():
        devices.append(NvidiaDevice(0))
    return devices


@pytest.mark.parametrize("kind", ["cpu", "sim", "cuda"])
def test_device_contract(kind: str, tmp_path: Path) -> None:
    if kind == "cuda" and not nvidia_count():
        pytest.skip("no NVIDIA GPU")
    device = {d.label.split(":")[0]: d for d in _devices(tmp_path)}[kind]
    snap = device.snapshot()
    assert snap.label == device.label
    assert snap.capacity_bytes == device.capacity_bytes
    if device.has_memory:
        assert device.capacity_bytes > 0
        assert snap.used_bytes is not None and 0 <= snap.used_bytes <= device.capacity_bytes
        assert snap.free_bytes == device.capacity_bytes - snap.used_bytes
        assert device.label.split(":")[1].isdigit()
    else:
        assert device.label == "cpu" and snap.free_bytes is None


def test_sim_context_is_charged_once_and_freed_with_the_process(tmp_path: Path) -> None:
    gpu = _sim(tmp_path)
    gpu.allocate(1 * GIB)
    assert gpu.snapshot().used_bytes == int(1.5 * GIB)
    gpu.allocate(1 * GIB)
    assert gpu.snapshot().used_bytes == int(2.5 * GIB)
    gpu.release()
    assert gpu.snapshot().used_bytes == int(0.5 * GIB)  # the context stays, like CUDA's
    assert gpu.peak_attrs(None) == {
        "peak_vram_allocated_mib": 2048.0,
        "peak_vram_reserved_mib": 2048.0,
        "peak_vram_mib": 2560.0,
    }


def _hold(path: str, ready: mp.synchronize.Event, stop: mp.synchronize.Event) -> None:
    gpu = SimulatedGpu(0, SimulatedGpuSpec(8.0, 0.5), path)
    gpu.allocate(6 * GIB)
    gpu.set_demand(0.8)
    ready.set()
    stop.wait(30)


def test_sim_capacity_is_shared_between_processes_and_dies_with_them(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(str(tmp_path), ready, stop))
    other.start()
    try:
        assert ready.wait(30)
        gpu = _sim(tmp_path)
        with pytest.raises(SimulatedOutOfMemoryError, match="Tried to allocate 2048.00 MiB"):
            gpu.allocate(2 * GIB)  # 6.5 GiB held + 0.5 context + 2 > 8
        gpu.allocate(1 * GIB)
        gpu.set_demand(0.6)
        assert gpu.slowdown() == pytest.approx(1.4)
    finally:
        other.kill()
        other.join()
    assert gpu.snapshot().used_bytes == int(1.5 * GIB)  # the killed process's memory is back
    assert gpu.slowdown() == 1.0


def test_sim_oom_is_classified_like_a_cuda_oom(tmp_path: Path) -> None:
    with pytest.raises(SimulatedOutOfMemoryError) as info:
        _sim(tmp_path).allocate(9 * GIB)
    assert classify_exception(info.value) is EndReason.OOM


def test_capacity_override_makes_the_card_smaller(tmp_path: Path) -> None:
    gpu = _sim(tmp_path, capacity_gib=2)
    assert gpu.capacity_bytes == 2 * GIB
    with pytest.raises(SimulatedOutOfMemoryError):
        gpu.allocate(int(1.6 * GIB))
    with pytest.raises(ValueError, match="capacity_gib must be > 0, got -1"):
        _sim(tmp_path, capacity_gib=-1)


def test_sim_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="context_gib must be in"):
        SimulatedGpuSpec(4.0, 5.0)
    assert os.environ.get("HPO_SIM_DEVICE") is None

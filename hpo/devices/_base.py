"""The device interface: what hpo needs to know about a place where trials run.

A :class:`Device` is read by the supervisor (capacity, a snapshot of use) and, in a worker,
bound to the trials it runs: the runner caps the process on it, the memory probe resets and
reads its peaks. Each kind (NVIDIA, CPU, simulated card) answers these in its own way, so no
code outside ``hpo.devices`` special-cases one of them.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class DeviceSnapshot:
    """One reading of a device: what it holds now and how busy it is."""

    label: str  # "cuda:0", "sim:0" or "cpu"
    capacity_bytes: int | None  # memory hpo may plan with (after any override); None on CPU
    used_bytes: int | None  # memory held by all processes now; None where unknown
    utilization: float | None  # compute busy fraction (may exceed 1 on a simulated device)

    @property
    def free_bytes(self) -> int | None:
        if self.capacity_bytes is None or self.used_bytes is None:
            return None
        return max(0, self.capacity_bytes - self.used_bytes)


class Device(abc.ABC):
    """A device trials run on. Readable from any process; never imports torch."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """The ``device`` user attribute of trials run here (``cuda:N``, ``sim:N``, ``cpu``)."""

    @property
    @abc.abstractmethod
    def capacity_bytes(self) -> int | None:
        """Device memory hpo plans with, or None for a device without its own memory."""

    @abc.abstractmethod
    def snapshot(self) -> DeviceSnapshot:
        """Current memory use and utilisation."""

    @property
    def has_memory(self) -> bool:
        return self.capacity_bytes is not None

    @property
    def context_bytes(self) -> int:
        """Device memory a worker process holds once it has touched the device."""
        return 0

    def foreign_bytes(self, own_pids: Collection[int]) -> int | None:
        """Memory held on the device now by processes outside ``own_pids`` (the supervisor,
        its workers and their children): another user's job, a notebook, a display server.
        None where the device cannot tell which process holds what."""
        return None

    # -- in a worker, for the trials that run on this device ------------------------------

    def cap_process(self, cap_bytes: int | None) -> None:
        """Cap this process on the device at ``cap_bytes`` (context included; None: no cap),
        so an under-estimate fails this trial with an OOM instead of its neighbours."""
        return None

    def reset_peaks(self) -> None:
        """Start measuring this process's peaks afresh (a trial starts)."""
        return None

    def held_bytes(self) -> int | None:
        """Device memory this process holds now, context included (None: unknown)."""
        return None

    def spike_lock_path(self) -> Path | None:
        """The file whose lock serializes declared memory spikes on this device across
        processes (:mod:`hpo.execution.spike`); None: spikes are not serialized."""
        return None

    def process_bytes(self, pids: set[int]) -> int | None:
        """Device memory held now by ``pids`` (sampled by the memory probe), where known."""
        return None

    def peak_attrs(self, sampled_peak: int | None) -> dict[str, Any]:
        """The trial's VRAM user attributes (none for a device without memory, never a fake
        zero); ``sampled_peak`` is the largest :meth:`process_bytes` seen during the trial."""
        return {}

    def release_cached(self) -> None:
        """Hand cached memory back after a trial, so the next one's cap is all it may use."""
        return None


def capped(capacity_bytes: int, capacity_gib: float | None) -> int:
    """``capacity_bytes`` lowered to an override in GiB (a bigger card acting as a smaller)."""
    if capacity_gib is None:
        return capacity_bytes
    if capacity_gib <= 0:
        raise ValueError(f"memory.capacity_gib must be > 0, got {capacity_gib}")
    return min(capacity_bytes, int(capacity_gib * GIB))

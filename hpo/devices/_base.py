"""The device interface: what hpo needs to know about a place where trials run."""

from __future__ import annotations

import abc
from dataclasses import dataclass

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


def capped(capacity_bytes: int, capacity_gib: float | None) -> int:
    """``capacity_bytes`` lowered to an override in GiB (a bigger card acting as a smaller)."""
    if capacity_gib is None:
        return capacity_bytes
    if capacity_gib <= 0:
        raise ValueError(f"memory.capacity_gib must be > 0, got {capacity_gib}")
    return min(capacity_bytes, int(capacity_gib * GIB))

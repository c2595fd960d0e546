"""A simulated GPU: a memory capacity shared by processes, an OOM like CUDA's, and contention.

The state of each simulated card is a small JSON ledger (``sim<N>.json`` in a state directory,
guarded by an ``fcntl`` lock) mapping each process that touched the card to the bytes it holds
and the compute it demands. Any process can read it (the supervisor, ``hpo status``); a trial's
process changes only its own entry. Entries of dead processes are dropped on the next access,
so a killed worker frees its memory like a real CUDA context does.

A process that touches the card first pays a per-process context overhead. An allocation that
does not fit raises :class:`SimulatedOutOfMemoryError`, whose message reads like torch's, so the
runner classifies it exactly like ``torch.cuda.OutOfMemoryError``. When the demands of the
processes on a card add up to more than 1, each of them runs that many times slower.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.contract import Attr
from hpo.devices._base import GIB, MIB, Device, DeviceSnapshot, capped


class SimulatedOutOfMemoryError(RuntimeError):
    """An allocation on a simulated card that does not fit (handled like a CUDA OOM)."""


@dataclass(frozen=True)
class SimulatedGpuSpec:
    """A simulated card: capacity and the memory each process's context costs."""

    capacity_gib: float = 24.0  # memory of the card
    context_gib: float = 0.5  # memory a process holds once it has touched the card

    def __post_init__(self) -> None:
        if self.capacity_gib <= 0:
            raise ValueError(f"capacity_gib must be > 0, got {self.capacity_gib}")
        if not 0 <= self.context_gib < self.capacity_gib:
            raise ValueError(f"context_gib must be in [0, capacity_gib), got {self.context_gib}")


class SimulatedGpu(Device):
    """Card ``index`` of a simulation whose state lives in ``state_dir``."""

    def __init__(
        self,
        index: int,
        spec: SimulatedGpuSpec,
        state_dir: str | os.PathLike[str],
        capacity_gib: float | None = None,
        readonly: bool = False,
    ) -> None:
        """``readonly``: only :meth:`snapshot` is used (``hpo status``); nothing is created
        or written, not even the lock file."""
        self._index = index
        self._readonly = readonly
        self._capacity = capped(int(spec.capacity_gib * GIB), capacity_gib)
        self._context = int(spec.context_gib * GIB)
        self._dir = Path(state_dir)
        if not readonly:
            self._dir.mkdir(parents=True, exist_ok=True)
        self._ledger = self._dir / f"sim{index}.json"
        self._lock = self._dir / f"sim{index}.lock"
        self._allocated = 0  # bytes this process allocated (without its context)
        self._peak_allocated = 0
        self._touched = False
        self._limit: int | None = None  # this process's cap on the card, context included

    @property
    def label(self) -> str:
        return f"sim:{self._index}"

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def context_bytes(self) -> int:
        return self._context

    def snapshot(self) -> DeviceSnapshot:
        if self._readonly:  # the ledger is replaced atomically: a plain read is consistent
            entries = {p: e for p, e in _read(self._ledger).items() if _alive(int(p))}
            return self._snapshot_of(entries)
        with self._locked() as entries:
            return self._snapshot_of(entries)

    def foreign_bytes(self, own_pids: Collection[int]) -> int | None:
        """What the ledger's live processes outside ``own_pids`` hold (read, never written)."""
        entries = _read(self._ledger)
        mine = {str(pid) for pid in own_pids}
        return sum(e["bytes"] for p, e in entries.items() if p not in mine and _alive(int(p)))

    def _snapshot_of(self, entries: dict[str, Any]) -> DeviceSnapshot:
        used = sum(e["bytes"] for e in entries.values())
        demand = sum(e["util"] for e in entries.values())
        return DeviceSnapshot(self.label, self._capacity, used, demand)

    # -- the process side: what a simulated objective calls ------------------------------

    def allocate(self, nbytes: int) -> None:
        """Hold ``nbytes`` more; SimulatedOutOfMemoryError if the card cannot give them."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        with self._locked() as entries:
            mine = entries.get(str(os.getpid()), {"bytes": 0, "util": 0.0})
            extra = nbytes + (0 if self._touched else self._context)
            used = sum(e["bytes"] for e in entries.values())
            own = self._context + self._allocated + nbytes
            if self._limit is not None and own > self._limit:
                raise SimulatedOutOfMemoryError(
                    f"CUDA out of memory (simulated {self.label}, per-process limit). Tried to "
                    f"allocate {nbytes / MIB:.2f} MiB; this process may hold "
                    f"{self._limit / MIB:.2f} MiB and holds {(own - nbytes) / MIB:.2f} MiB"
                )
            if used + extra > self._capacity:
                free = max(0, self._capacity - used)
                raise SimulatedOutOfMemoryError(
                    f"CUDA out of memory (simulated {self.label}). Tried to allocate "
                    f"{nbytes / MIB:.2f} MiB; {self._capacity / MIB:.2f} MiB total capacity, "
                    f"{free / MIB:.2f} MiB free, {self._allocated / MIB:.2f} MiB allocated "
                    f"by this process"
                )
            self._touched = True
            self._allocated += nbytes
            self._peak_allocated = max(self._peak_allocated, self._allocated)
            mine["bytes"] = self._context + self._allocated
            entries[str(os.getpid())] = mine

    def release(self, nbytes: int | None = None) -> None:
        """Give back ``nbytes`` (all this process allocated when None); the context stays."""
        nbytes = self._allocated if nbytes is None else min(nbytes, self._allocated)
        self._allocated -= nbytes
        if not self._touched:
            return
        with self._locked() as entries:
            mine = entries.setdefault(str(os.getpid()), {"bytes": 0, "util": 0.0})
            mine["bytes"] = self._context + self._allocated

    def set_limit(self, nbytes: int | None) -> None:
        """Cap what this process may hold on the card (like a per-process memory fraction)."""
        if nbytes is not None and nbytes <= 0:
            raise ValueError(f"limit must be > 0 bytes, got {nbytes}")
        self._limit = nbytes

    def set_demand(self, utilization: float) -> None:
        """This process's compute demand while it runs (0 = idle, 1 = the whole card)."""
        if utilization < 0:
            raise ValueError(f"utilization must be >= 0, got {utilization}")
        with self._locked() as entries:
            mine = entries.setdefault(str(os.getpid()), {"bytes": 0, "util": 0.0})
            mine["util"] = float(utilization)

    def slowdown(self) -> float:
        """How many times slower work runs now: the card's total demand, at least 1."""
        demand = self.snapshot().utilization or 0.0
        return max(1.0, demand)

    # -- the worker's side (see hpo.devices.Device) ----------------------------------------

    def cap_process(self, cap_bytes: int | None) -> None:
        self.set_limit(cap_bytes)

    def reset_peaks(self) -> None:
        self._peak_allocated = self._allocated

    def held_bytes(self) -> int | None:
        return self._context + self._allocated if self._touched else 0

    def process_bytes(self, pids: set[int]) -> int | None:
        """What this process holds on the card now (its ledger entry), once it touched it."""
        return self.held_bytes() if self._touched and os.getpid() in pids else None

    def spike_lock_path(self) -> Path | None:
        return self._dir / f"sim{self._index}.spike.lock"

    def peak_attrs(self, sampled_peak: int | None) -> dict[str, Any]:
        """This process's peaks since :meth:`reset_peaks`, from its own ledger entry (none if
        it never touched the card)."""
        if not self._touched:
            return {}
        allocated = round(self._peak_allocated / MIB, 1)
        return {
            Attr.PEAK_VRAM_ALLOCATED_MIB: allocated,
            Attr.PEAK_VRAM_RESERVED_MIB: allocated,
            Attr.PEAK_VRAM_MIB: round((self._peak_allocated + self._context) / MIB, 1),
        }

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The ledger, locked, without dead processes; written back when the block ends."""
        if self._readonly:
            raise RuntimeError(f"{self.label} was opened read-only")
        with open(self._lock, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = _read(self._ledger)
                live = {pid: e for pid, e in entries.items() if _alive(int(pid))}
                before = json.dumps(live, sort_keys=True)
                yield live
                if json.dumps(live, sort_keys=True) != before or len(live) != len(entries):
                    _write(self._ledger, live)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, holds no memory)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"

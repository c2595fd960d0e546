"""Admission: which device a trial starts on, and whether it starts now, waits, or never runs.

A trial is admitted when its upper memory estimate fits the free budget of some device. A
device's budget is its capacity minus the safety margin; what is used of it is the context
overhead of every live worker process that touched it plus the reservations of the trials
running there (their upper estimates without the context). A trial with no trusted estimate
(nothing measured yet, or an over-budget extrapolation from one point) runs alone on a device.

When a trial does not fit only because idle workers hold their contexts on the device, those
workers are reclaimed (the supervisor recycles them; a CUDA context is freed only when its
process exits) and the trial waits until they are gone. Every decision is a :class:`Placement`
naming the outcome (admit / wait, a :class:`~hpo.contract.Decision`) and the reason, which the
supervisor logs; pre-pruning is the memory gate's decision (:mod:`hpo.memory.gate`).

With ``memory.overcommit`` (safe overcommit, :mod:`hpo.scheduling.overcommit`) a trial
reserves a quantile of its estimate and its cap is that reservation, so the caps on a device
never add up to more than its budget; a trial with no trusted estimate starts as a capped probe
beside what runs, with the free memory (at least half the budget) as its reservation and cap.

With ``memory.pack=false`` admission is memory-blind: a trial starts on the least busy device
whenever a worker is idle, as a fixed PAR always did (pre-pruning still applies).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hpo.contract import Decision
from hpo.devices import MIB, Device
from hpo.memory import Estimate, device_budget, device_margin, lone_cap
from hpo.scheduling.overcommit import shaded

logger = logging.getLogger(__name__)
_NOTE_BYTES = 256 * MIB  # a change in memory held outside hpo worth a log line

# A worker as admission sees it: the supervisor's WorkerHandle, a replay's worker index.
W = TypeVar("W")


@dataclass(frozen=True)
class Placement(Generic[W]):
    """The admission decision for one trial."""

    decision: Decision
    reason: str
    device: int | None = None  # index of the chosen device
    worker: W | None = None  # the idle worker to run it on (admit)
    reserve_bytes: int = 0  # device memory held for the trial beyond its worker's context
    cap_bytes: int | None = None  # per-process limit on the device, context included
    reclaim: tuple[W, ...] = ()  # idle workers to recycle so their contexts free memory
    spike_bytes: int = 0  # its declared spike, held in the device's one spike slot


@dataclass
class _Running:
    device: int
    reserve_bytes: int
    ends_at: float  # expected end (monotonic seconds; inf while unknown)
    spike_bytes: int = 0


@dataclass(frozen=True)
class Protection:
    """Memory set aside on ``device`` for a starving trial, expected free by ``until``."""

    device: int
    nbytes: int
    until: float  # monotonic time the trials in its way are expected to have ended


@dataclass
class Slot(Generic[W]):
    """What admission needs to know of one worker process."""

    key: W  # the worker
    idle: bool
    device: int | None  # the device it is bound to (it touched it), or None


@dataclass
class DeviceBooks:
    """Reservations of running trials per device (the supervisor's view, not the device's)."""

    devices: Sequence[Device]
    margin_frac: float
    context_bytes: int
    running: dict[int, _Running] = field(default_factory=dict)  # by trial number
    foreign: dict[int, int] = field(default_factory=dict)  # held by processes outside hpo
    _measured_at: float = -math.inf

    def budget(self, index: int) -> int:
        """The device's capacity less the margin and what processes outside hpo hold."""
        return device_budget(self.devices[index], self.margin_frac) - self.foreign.get(index, 0)

    def measure_foreign(self, every_s: float = 1.0) -> None:
        """Read what processes other than this one and its descendants (the workers and
        their children) hold on each device, at most every ``every_s`` seconds."""
        now = time.monotonic()
        if now - self._measured_at < every_s:
            return
        self._measured_at = now
        own = own_pids()
        for index, device in enumerate(self.devices):
            held = (device.foreign_bytes(own) if device.has_memory else None) or 0
            if abs(held - self.foreign.get(index, 0)) >= _NOTE_BYTES:
                logger.info("%s: %.0f MiB held outside hpo", device.label, held / MIB)
            self.foreign[index] = held

    def reserved(self, index: int) -> int:
        """Steady reservations on device ``index``, plus its spike slot."""
        here = [r for r in self.running.values() if r.device == index]
        return sum(r.reserve_bytes for r in here) + self.spike_slot(index)

    def spike_slot(self, index: int) -> int:
        """The largest declared spike of the trials on device ``index``: spikes take turns
        (:mod:`hpo.execution.spike`), so one slot holds any of them."""
        return max((r.spike_bytes for r in self.running.values() if r.device == index), default=0)

    def n_running(self, index: int) -> int:
        return sum(r.device == index for r in self.running.values())

    def hold(self, trial_number: int, placement: Placement[W], ends_at: float = math.inf) -> None:
        assert placement.device is not None
        self.running[trial_number] = _Running(
            placement.device, placement.reserve_bytes, ends_at, placement.spike_bytes
        )

    def ends(self, index: int) -> list[tuple[float, int]]:
        """(expected end, reservation) of the trials running on device ``index``, soonest first."""
        here = [r for r in self.running.values() if r.device == index]
        return sorted((r.ends_at, r.reserve_bytes) for r in here)

    def release(self, trial_number: int) -> None:
        self.running.pop(trial_number, None)

    def settle(self, trial_number: int, reserve_bytes: int) -> int:
        """A running trial now holds at most ``reserve_bytes`` (see :mod:`hpo.execution.settle`;
        outside its spikes, whose slot stays): its reservation shrinks to that; returns the
        bytes freed."""
        held = self.running.get(trial_number)
        if held is None or reserve_bytes >= held.reserve_bytes:
            return 0
        freed, held.reserve_bytes = held.reserve_bytes - reserve_bytes, reserve_bytes
        return freed


class AdmissionScheduler:
    """Places trials on devices by predicted memory (or blindly, with ``pack=False``)."""

    def __init__(
        self,
        devices: Sequence[Device],
        margin_frac: float,
        context_bytes: int,
        pack: bool = True,
        clock: Callable[[], float] = time.monotonic,
        overcommit: bool = False,
    ) -> None:
        """``clock`` is the time expected ends are measured on (a replay passes its own);
        ``overcommit``: reserve a quantile of each estimate under a cap to match."""
        self.books = DeviceBooks(devices, margin_frac, context_bytes)
        self.clock = clock
        self._pack = pack and any(d.has_memory for d in devices)
        self.overcommit = overcommit and self._pack
        self._margin_bytes = [device_margin(d, margin_frac) for d in devices]

    @property
    def packing(self) -> bool:
        return self._pack

    def margin_bytes(self, index: int) -> int:
        """What a trial's cap on device ``index`` allows above its reservation (none under
        overcommit: the caps add up to no more than the budget)."""
        return 0 if self.overcommit else self._margin_bytes[index]

    def lone_bytes(self) -> int | None:
        """The most a trial may hold alone on any device now (its lone cap): the budget, less
        what processes outside hpo hold, plus the margin; None without device memory."""
        books = self.books
        caps = [
            lone_cap(books.budget(i), d, books.margin_frac)
            for i, d in enumerate(books.devices)
            if d.has_memory
        ]
        return max(caps) if caps else None

    def shade(self, estimate: Estimate | None, cost_frac: float | None) -> Estimate | None:
        """What a trial with ``estimate`` reserves: under overcommit the quantile
        :func:`~hpo.scheduling.overcommit.shaded` picks for a cap hit costing ``cost_frac``
        of its duration; else the estimate itself."""
        if not self.overcommit or estimate is None:
            return estimate
        return shaded(estimate, cost_frac)

    def place(
        self,
        estimate: Estimate | None,
        slots: Sequence[Slot[W]],
        protect: Protection | None = None,
        duration_s: float | None = None,
    ) -> Placement[W]:
        """Where a trial with this estimate can start now, given the workers' states.

        ``protect`` is memory set aside for a starving trial (see :mod:`hpo.scheduling.backlog`):
        this trial may use it only if it is expected (``duration_s``) to end before it is needed.
        """
        ends = self.clock() + (math.inf if duration_s is None else duration_s)
        in_time = protect is not None and math.isfinite(protect.until) and ends <= protect.until
        protect = None if in_time else protect
        idle = [s for s in slots if s.idle]
        if not idle:
            return Placement(Decision.WAIT, "no idle worker")
        if not self._pack:
            return self._blind(idle)
        best: Placement[W] | None = None
        for index in self._by_free_memory(slots):
            placement = self._try_device(index, estimate, slots, protect)
            if placement.decision is Decision.ADMIT and not placement.reclaim:
                return placement
            if best is None or (placement.reclaim and not best.reclaim):
                best = placement
        assert best is not None
        if best.reclaim:  # fits once idle workers' contexts are freed: free them, then wait
            n = len(best.reclaim)
            return Placement(
                Decision.WAIT,
                f"{best.reason}; recycling {n} idle worker(s) to free their contexts",
                best.device,
                reclaim=best.reclaim,
            )
        return best

    def _blind(self, idle: Sequence[Slot[W]]) -> Placement[W]:
        n = len(self.books.devices)
        index = min(range(n), key=self.books.n_running)
        worker = next((s for s in idle if s.device in (index, None)), idle[0])
        device = index if worker.device in (index, None) else worker.device
        return Placement(Decision.ADMIT, "memory-blind", device, worker.key)

    def protection(self, estimate: Estimate | None, slots: Sequence[Slot[W]]) -> Protection | None:
        """Memory set aside for a starving trial: on the device it would go to, its estimate
        (the whole budget when it must run alone), and when the trials in its way should end."""
        if not self._pack:
            return None
        device = self.place(estimate, slots).device
        if device is None:
            device = self._by_free_memory(slots)[0]
        budget = self.books.budget(device)
        alone = estimate is None or self._alone_only(device, estimate)
        need = budget if alone or estimate is None else estimate.upper_bytes  # None: alone
        free = self._free(device, slots)
        until = self.clock()
        for ends_at, nbytes in self.books.ends(device):
            if free >= need:
                break
            free, until = free + nbytes, max(until, ends_at)
        return Protection(device, int(need), until)

    def _alone_only(self, index: int, estimate: Estimate | None) -> bool:
        """Whether a trial runs on device ``index`` only alone, with its whole budget: nothing
        trusted is known of it, or it would not fit the device even with nothing else on it
        (its upper estimate, or that with its spike's slot, over the budget). Such a trial
        would otherwise wait for memory no end of trials could free, and everything waiting
        behind it with it."""
        budget = self.books.budget(index)
        if estimate is None or estimate.upper_bytes > budget:
            return True
        _, need, spike = _shares(estimate, self.books.context_bytes)
        return self.books.context_bytes + need + spike > budget

    def _by_free_memory(self, slots: Sequence[Slot[W]]) -> list[int]:
        n = len(self.books.devices)
        return sorted(range(n), key=lambda i: -self._free(i, slots))

    def _used(self, index: int, slots: Sequence[Slot[W]]) -> int:
        contexts = sum(s.device == index for s in slots) * self.books.context_bytes
        return contexts + self.books.reserved(index)

    def _free(self, index: int, slots: Sequence[Slot[W]]) -> int:
        return self.books.budget(index) - self._used(index, slots)

    def _try_device(
        self,
        index: int,
        estimate: Estimate | None,
        slots: Sequence[Slot[W]],
        protect: Protection | None,
    ) -> Placement[W]:
        books, ctx = self.books, self.books.context_bytes
        budget, label = books.budget(index), books.devices[index].label
        exclusive = self._alone_only(index, estimate)
        protected = protect is not None and protect.device == index
        probe = self.overcommit and estimate is None and not protected
        if exclusive and not probe and (books.n_running(index) or protected):
            return Placement(Decision.WAIT, f"no trusted estimate: waits to run alone on {label}")
        probe = probe and books.n_running(index) > 0
        worker = _pick_worker(index, slots)
        if worker is None:
            return Placement(Decision.WAIT, f"no idle worker can use {label}", index)
        others = [s for s in slots if s.device == index and s.key is not worker.key]
        held = len(others) * ctx + books.reserved(index)
        if protect is not None and protected:
            held += protect.nbytes
        spike = 0
        if probe:  # beside what runs, capped at the free memory: at least half the budget
            need = budget - held - ctx
            if need < budget // 2:
                why = f"no trusted estimate: waits for half of {label} to probe it"
                return Placement(Decision.WAIT, why, index)
            cap = ctx + need
            why = f"probe on {label}: capped at the {cap / MIB:.0f} MiB free"
            return Placement(Decision.ADMIT, why, index, worker.key, need, cap)
        if exclusive:  # alone: every idle neighbour's context is freed first
            need, short = budget - held - ctx, len(others) * ctx
            whole = need
        else:
            assert estimate is not None  # not exclusive
            whole, need, spike = _shares(estimate, ctx)
            grow = max(0, spike - books.spike_slot(index))
            short = held + ctx + need + grow - budget
        if short <= 0 and need > 0:
            lone = lone_cap(budget, books.devices[index], books.margin_frac)
            cap = min(ctx + whole + self._margin_bytes[index], lone)
            if self.overcommit and not exclusive:  # the caps add up to at most the budget
                cap = ctx + need + spike
            why = f"fits {label}: {(ctx + need) / MIB:.0f} of {(budget - held) / MIB:.0f} MiB free"
            return Placement(Decision.ADMIT, why, index, worker.key, need, cap, spike_bytes=spike)
        why = (
            f"{(ctx + max(need, 0)) / MIB:.0f} MiB does not fit the "
            f"{(budget - held) / MIB:.0f} MiB free on {label}"
        )
        idle_here = [s.key for s in others if s.idle]
        return Placement(Decision.WAIT, why, index, reclaim=_enough(idle_here, short, ctx))


def _shares(estimate: Estimate, ctx: int) -> tuple[int, int, int]:
    """What a trial beside others takes of a device besides its context: its whole reservation,
    the part held as its own (a declared spike's low end comes off it), and its spike, which
    shares the device's spike slot."""
    whole = max(MIB, int(estimate.upper_bytes) - ctx)  # no estimate is only a context
    spike = int(estimate.spike_bytes)
    need = max(MIB, whole - int(estimate.spike_floor_bytes)) if spike else whole
    return whole, need, spike


def own_pids() -> set[int]:
    """This process and its descendants."""
    import psutil

    me = psutil.Process()
    try:
        return {me.pid, *(c.pid for c in me.children(recursive=True))}
    except psutil.Error:
        return {me.pid}


def _pick_worker(index: int, slots: Sequence[Slot[W]]) -> Slot[W] | None:
    """An idle worker already on the device (its context is paid), else an unbound one."""
    idle = [s for s in slots if s.idle]
    return next((s for s in idle if s.device == index), None) or next(
        (s for s in idle if s.device is None), None
    )


def _enough(idle: list[W], short: int, ctx: int) -> tuple[W, ...]:
    """The fewest idle workers whose contexts cover ``short`` bytes, or () if they cannot."""
    if short <= 0 or ctx <= 0:
        return ()
    n = -(-short // ctx)
    return tuple(idle[:n]) if n <= len(idle) else ()

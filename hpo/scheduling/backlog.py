"""Trials asked from the sampler that wait for memory, with backfill that never starves one.

Waiting trials are offered largest first (first-fit decreasing): when the largest does not fit
now, its memory is set aside (*protected*) on the device it waits for, and smaller trials start
only beside that reservation, or if they are expected to end before it is needed (EASY
backfill). Big trials, which need a nearly empty card, thus start as soon as the card has
drained instead of waiting for a gap that backfilling small trials keeps closing.

Each time a trial starts, the older ones it overtook count one bypass; once the oldest has
been bypassed ``max_bypass`` times it comes first (and is protected) whatever its size. The
trials running when it became protected end, nothing started after it stands in its way, and
it fits an empty device (the gate lets no other trial through), so no trial waits forever.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hpo.contract import Attr
from hpo.execution.protocol import Assignment
from hpo.memory import Estimate
from hpo.scheduling.admission import AdmissionScheduler, Placement, Slot, W

# What a waiting trial is to its owner: the supervisor's AskedTrial, a replay's job index.
T = TypeVar("T")


@dataclass(eq=False)
class Waiting(Generic[T]):
    """An asked trial that has not started yet."""

    trial: T
    params: dict[str, Any]
    estimate: Estimate | None
    number: int = field(kw_only=True)  # the trial's number: its key in the device books
    since: float = field(default_factory=time.monotonic)
    bypassed: int = 0
    last_reason: str = ""  # the last wait reason logged for it (logged again only on change)
    reestimated: dict[str, Any] | None = None  # the estimate's attrs, if it changed since asked
    trial_id: int = -1  # the trial's storage id
    held: str | None = None  # why it may not start yet whatever the memory (learn small first)
    accum_steps: int = 1  # micro-batches per step; ``params`` hold the micro-batch
    unwritten: dict[str, Any] | None = None  # its attributes not yet in the storage
    need_bytes: float = 0.0  # re-queued after a cap hit: what its original measured it needs


class Backlog:
    """Waiting trials, oldest first."""

    def __init__(self, max_bypass: int, limit: int) -> None:
        if max_bypass < 0:
            raise ValueError(f"max_bypass must be >= 0, got {max_bypass}")
        self.items: list[Waiting[Any]] = []
        self._max_bypass = max_bypass
        self.limit = max(1, limit)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def starving(self) -> bool:
        """True when the oldest trial has been overtaken ``max_bypass`` times: it comes first."""
        return bool(self.items) and self.items[0].bypassed >= self._max_bypass

    def queue(self) -> list[Waiting[Any]]:
        """The order trials are offered in: a starving oldest trial, then the largest first
        (unknown estimates count as largest: they run alone); held trials last."""
        order = sorted(self.items, key=upper_bytes, reverse=True)  # stable: older first on ties
        if self.starving and self.items[0].held is None:
            order.remove(self.items[0])
            order.insert(0, self.items[0])
        return [i for i in order if i.held is None] + [i for i in order if i.held is not None]

    @property
    def full(self) -> bool:
        """No trial may be asked now (:meth:`may_ask`, none being asked)."""
        return not self.may_ask()

    def add(self, item: Waiting[Any]) -> None:
        self.items.append(item)

    def started(self, item: Waiting[Any]) -> None:
        """``item`` starts: every older waiting trial was overtaken once more."""
        index = self.items.index(item)
        for older in self.items[:index]:
            older.bypassed += 1
        del self.items[index]

    def drop(self, item: Waiting[Any]) -> None:
        """``item`` leaves without starting (it was found never to fit): nobody was overtaken."""
        self.items.remove(item)

    def drain(self, why: str) -> list[tuple[Assignment, dict[str, Any], str]]:
        """Empty the backlog (the run ends): each waiting trial with its wait, to record."""
        now = time.monotonic()
        drained = [
            (
                Assignment(item.trial_id, item.number, None),
                {Attr.ADMIT_WAIT_S: round(now - item.since, 3)},
                why,
            )
            for item in self.items
        ]
        self.items.clear()
        return drained

    def may_ask(self, asking: int = 0) -> bool:
        """Whether a new trial may be asked to fill an idle worker, while ``asking`` trials
        are being asked already (each of them will wait here too)."""
        return len(self.items) + asking < self.limit


def place_next(
    backlog: Backlog,
    sched: AdmissionScheduler,
    item: Waiting[Any],
    slots: Sequence[Slot[W]],
    duration_s: float | None = None,
    reserve: Callable[[Waiting[Any]], Estimate | None] | None = None,
) -> Placement[W]:
    """Where ``item`` can start now: beside the memory protected for the first trial of the
    queue, unless ``item`` is that trial or should end (after ``duration_s``) before the
    protected one needs the memory. ``reserve`` gives what a waiting trial reserves (by
    default its estimate; under overcommit a quantile of it). The caller starts it and calls
    :meth:`Backlog.started`."""
    reserve = reserve or (lambda waiting: waiting.estimate)
    protect = None
    first = backlog.queue()[0]
    if item is not first:
        protect = sched.protection(reserve(first), slots)
    return sched.place(reserve(item), slots, protect, duration_s)


def upper_bytes(item: Waiting[Any]) -> float:
    """The memory ``item`` is expected to need at most (infinite while unknown)."""
    return math.inf if item.estimate is None else item.estimate.upper_bytes

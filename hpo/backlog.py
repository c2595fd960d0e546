"""Trials asked from the sampler that wait for memory, with backfill that never starves one.

When the oldest waiting trial does not fit, a later one that fits may start first (backfill).
Each time that happens the trials it overtook count one bypass; once the oldest has been
bypassed ``max_bypass`` times it is *protected*: its memory is set aside on the device it
waits for, and a later trial may start only if it fits beside that reservation. The trials
running when it became protected end, nothing started after it stands in its way, and it fits
an empty device (the gate lets no other trial through), so no trial waits forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hpo.admission import AdmissionScheduler, Placement, Slot
from hpo.memory import Estimate


@dataclass(eq=False)
class Waiting:
    """An asked trial that has not started yet."""

    trial: Any  # optuna.Trial
    params: dict[str, Any]
    estimate: Estimate | None
    since: float = field(default_factory=time.monotonic)
    bypassed: int = 0
    last_reason: str = ""  # the last wait reason logged for it (logged again only on change)


class Backlog:
    """Waiting trials, oldest first."""

    def __init__(self, max_bypass: int, limit: int) -> None:
        if max_bypass < 0:
            raise ValueError(f"max_bypass must be >= 0, got {max_bypass}")
        self.items: list[Waiting] = []
        self._max_bypass = max_bypass
        self.limit = max(1, limit)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def starving(self) -> bool:
        """True when the oldest trial is protected: later ones must fit beside it."""
        return bool(self.items) and self.items[0].bypassed >= self._max_bypass

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit

    def add(self, item: Waiting) -> None:
        self.items.append(item)

    def started(self, item: Waiting) -> None:
        """``item`` starts: every older waiting trial was overtaken once more."""
        index = self.items.index(item)
        for older in self.items[:index]:
            older.bypassed += 1
        del self.items[index]

    def may_ask(self) -> bool:
        """Whether a new trial may be asked to fill an idle worker."""
        return not self.full


def offer(
    backlog: Backlog,
    sched: AdmissionScheduler,
    item: Waiting,
    slots: Sequence[Slot],
    act: Callable[[Waiting, Placement], bool],
    duration_s: float | None = None,
) -> Placement:
    """Place ``item`` (beside the protected oldest trial, if there is one, unless it should
    end, after ``duration_s``, before that one needs the memory) and let ``act`` start it or
    record its wait; ``act`` returns whether it started."""
    protect = None
    if backlog.starving and item is not backlog.items[0]:
        protect = sched.protection(backlog.items[0].estimate, slots)
    placement = sched.place(item.estimate, slots, protect, duration_s)
    if act(item, placement):
        backlog.started(item)
    return placement

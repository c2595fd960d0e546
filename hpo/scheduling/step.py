"""One admission step: which waiting trial starts where, now.

The supervisor's launcher (:mod:`hpo.supervisor.dispatch`) and the replay
(:mod:`hpo.scheduling.replay`, which ``hpo plan`` and the packing bound run) both decide with
:meth:`AdmissionStep.decide` and start with :meth:`AdmissionStep.start`, so a what-if replays
the scheduler it claims to. A decision takes, in order:

1. the hold-back: a trial waits for a smaller configuration of its group to be measured first
   (the memory gate's rule, :meth:`hpo.memory.MemoryGate.hold_back`; memory-aware only);
2. the placement: on a device beside the memory protected for the first trial of the queue,
   unless it is expected to end before that one needs it
   (:func:`~hpo.scheduling.backlog.place_next`), reserving its estimate or, under safe
   overcommit, the quantile of it the measured cost of a cap hit makes cheapest
   (:meth:`AdmissionStep.reserve`, :mod:`hpo.scheduling.overcommit`);
3. the RAM check: an admitted trial whose host RAM does not fit waits, unless nothing runs that
   could free any (it then starts alone, and the reason says so).

What differs between the callers is what they pass: the supervisor a RAM check and the gate's
hold-back; the replay neither (it knows each job's reservation and models no host RAM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hpo.contract import Decision
from hpo.memory import Estimate
from hpo.scheduling.admission import AdmissionScheduler, Placement, Slot, W
from hpo.scheduling.backlog import Backlog, Waiting, place_next
from hpo.scheduling.durations import DurationModel

# (params, the worker it would run on) -> (fits, why not)
RamCheck = Callable[[Mapping[str, Any], Any], tuple[bool, str]]
# (params, the unmeasured params waiting or running) -> why it waits, or None
HoldBack = Callable[[Mapping[str, Any], Iterable[Mapping[str, Any]]], str | None]


class AdmissionStep:
    """Decides and starts waiting trials for one scheduler, backlog and duration model."""

    def __init__(
        self,
        backlog: Backlog,
        sched: AdmissionScheduler,
        durations: DurationModel,
        ram: RamCheck | None = None,
        hold_back: HoldBack | None = None,
    ) -> None:
        """Expected ends are measured on the scheduler's clock (a replay's is its own)."""
        self.backlog, self.sched, self.durations = backlog, sched, durations
        self._ram, self._hold_back = ram, hold_back

    def add(self, item: Waiting[Any], running: Iterable[Mapping[str, Any]] = ()) -> None:
        """A newly asked trial waits in the backlog, held back where the rule says so."""
        self.backlog.add(item)
        item.held = self._held(item, list(running))

    def refresh_holds(self, running: Iterable[Mapping[str, Any]] = ()) -> None:
        """Say again which waiting trials are held back, beside the ``running`` trials' params
        (the queue offers held trials last)."""
        running = list(running)
        for item in self.backlog.items:
            item.held = self._held(item, running)

    def _held(self, item: Waiting[Any], running: list[Mapping[str, Any]]) -> str | None:
        if self._hold_back is None or not self.sched.packing:  # blind: start when idle
            return None
        pending = [w.params for w in self.backlog.items if w is not item]
        return self._hold_back(item.params, pending + running)

    def decide(self, item: Waiting[Any], slots: Sequence[Slot[W]]) -> Placement[W]:
        """Where ``item`` starts now, or why it waits; changes nothing."""
        if item.held is not None:
            return Placement(Decision.WAIT, item.held)
        duration = self.durations.predict(item.params)
        placement = place_next(self.backlog, self.sched, item, slots, duration, self.reserve)
        if placement.decision is not Decision.ADMIT or self._ram is None:
            return placement
        ram_ok, why = self._ram(item.params, placement.worker)
        if ram_ok:
            return placement
        if self.sched.books.running:  # a running trial's end may free it
            return Placement(Decision.WAIT, why)
        return replace(placement, reason=f"{placement.reason}; starts alone although it {why}")

    def reserve(self, item: Waiting[Any]) -> Estimate | None:
        """What ``item`` reserves: its estimate, or under safe overcommit the quantile of it
        that a cap hit of its group, as measured, makes cheapest (:mod:`.overcommit`)."""
        if not self.sched.overcommit:
            return item.estimate
        return self.sched.shade(item.estimate, self.durations.cap_hit_frac(item.params))

    def start(self, item: Waiting[Any], placement: Placement[W]) -> None:
        """``item`` starts as placed: its device memory is held until it is released (by its
        number) and it leaves the backlog, overtaking the older trials."""
        expected = self.durations.predict(item.params)
        ends_at = math.inf if expected is None else self.sched.clock() + expected
        self.sched.books.hold(item.number, placement, ends_at)
        self.backlog.started(item)

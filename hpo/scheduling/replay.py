"""Admission replayed as events: what a list of known trials costs under a policy.

No processes, no storage, no sampler: each :class:`Job` is one trial as it runs alone (the
memory it holds at its peak, its worker's context included; what memory-aware admission would
reserve for it; its seconds before the first allocation and of work after it; the share of the
card's compute its steps use), and :func:`replay` runs jobs, drawn in order and again from the
start when the list is spent, until ``n`` have finished, on ``count`` cards of one size:

- ``parN`` (memory-blind, fixed PAR): a trial starts whenever one of N workers is idle. At its
  first allocation, if what its card already holds (the allocated trials' steady memory, which
  is their peak unless they declared spikes, and the other workers' contexts) plus its own
  exceeds the card, it runs out of memory: its start-up is lost. Its ``retry`` (the same
  configuration with twice the micro-batches, for an objective that accumulates gradients) is
  asked next, as hpo enqueues it; a job without one is drawn again later. One that does not fit
  the card even alone runs out of memory once and is never drawn again as it is (after its
  own OOM hpo's gate pre-prunes it, or runs it as the micro-batches of its retry); where the
  gate knows its memory from the start (``gate_knows``), never.
- ``auto`` (memory-aware, up to ``cap`` workers): the supervisor's own admission step
  (:class:`~hpo.scheduling.step.AdmissionStep`: placement, backlog, expected durations learned
  as the supervisor learns them; no hold-back, since every job's reservation is known, and no
  host RAM) places each trial by its reservation. A job reserving more than
  a lone trial may hold (the budget plus the margin) runs as the first of its retries that does
  not, or is pre-pruned; one whose peak exceeds its per-process cap runs out of memory, and its
  retry is asked next or it is drawn again later with its peak reserved. A
  job that settles (``settle_after``) holds only ``settled_bytes`` from then on.
- ``auto-oc`` (memory-aware under safe overcommit, :mod:`hpo.scheduling.overcommit`): the same
  step reserves the quantile of each job's estimate (``point_bytes`` to ``reserve_bytes``) a
  cap hit's measured cost makes cheapest, under a cap to match. A job whose peak exceeds that
  cap but fits a lone trial's is a cap hit (its start-up is lost, no neighbour's): it is asked
  again next, needing its peak, and what it lost is learned as the supervisor learns it.

Trials at work whose demands add up to more than 1 slow down together (a card does at most
one GPU-second of work per second); a demand of 0 means the work seconds were measured as the
trial ran and are not slowed further. A worker is idle again ``gap_s`` after its trial ends
(what the supervisor and the worker spend between trials).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hpo.contract import Attr, Decision, EndReason
from hpo.devices import Device, DeviceSnapshot
from hpo.memory import Estimate, EstimateSource
from hpo.scheduling.admission import AdmissionScheduler, Placement, Slot
from hpo.scheduling.backlog import Backlog, Waiting
from hpo.scheduling.durations import DurationModel
from hpo.scheduling.jobs import Cards, Event, Job, Outcome, Policy, Start, Step, summarise
from hpo.scheduling.overcommit import with_need
from hpo.scheduling.step import AdmissionStep

__all__ = ["Cards", "Event", "Job", "Outcome", "Policy", "Start", "Step", "replay", "summarise"]

_EPS = 1e-9


class _Card(Device):
    """A card of the replay: admission keeps the books, the replay its own ledger."""

    def __init__(self, capacity_bytes: int, index: int) -> None:
        self._capacity, self._index = capacity_bytes, index

    @property
    def label(self) -> str:
        return f"replay:{self._index}"

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(self.label, self._capacity, None, None)


@dataclass
class _Run:
    worker: int
    job: int  # index into the job list
    setup: float  # start-up seconds left
    work: float  # work seconds left (alone)
    start: float
    cap: float  # the per-process limit admission set (the card, memory-blind)
    allocated: bool = False
    settles_at: float = -1.0  # work seconds left when it settles (-1: it does not)


def replay(
    jobs: Sequence[Job],
    n: int,
    policy: Policy,
    cards: Cards,
    gap_s: float = 0.0,
    groups: Sequence[str] = (),
    max_waiting: int = 8,
    max_bypass: int = 8,
) -> Outcome:
    """Run ``jobs`` (in order, cyclically) under ``policy`` until ``n`` have finished; the wall
    time is infinite when none of them can run on these cards."""
    if n < 1 or not jobs:
        raise ValueError("replay needs at least one job and n >= 1")
    return _Replay(jobs, policy, cards, gap_s, groups, max_waiting, max_bypass).run(n)


class _Replay:
    def __init__(
        self,
        jobs: Sequence[Job],
        policy: Policy,
        cards: Cards,
        gap_s: float,
        groups: Sequence[str],
        max_waiting: int,
        max_bypass: int,
    ) -> None:
        self.jobs, self.policy, self.cards, self.gap_s = list(jobs), policy, cards, gap_s
        self.now, self.finished, self.ooms, self.pre_pruned = 0.0, 0, 0, 0
        devices = [_Card(cards.capacity_bytes, i) for i in range(cards.count)]
        self.sched = AdmissionScheduler(
            devices,
            cards.margin_frac,
            cards.context_bytes,
            policy.aware,
            clock=lambda: self.now,
            overcommit=policy.overcommit,
        )
        self.alone = cards.capacity_bytes  # budget + margin: the most a lone trial may hold
        self.backlog = Backlog(max_bypass, max_waiting)
        self.durations = DurationModel(groups)
        self.step = AdmissionStep(self.backlog, self.sched, self.durations)
        self.starts: list[Start] = []  # every trial started, in order
        self.events: list[Event] = []  # what drove admission, in order
        self.bound: dict[int, int | None] = dict.fromkeys(range(policy.par))
        self.idle_at: dict[int, float] = dict.fromkeys(range(policy.par), 0.0)
        self.running: dict[int, _Run] = {}
        self.drawn = len(self.jobs)  # the jobs drawn in turn; their retries follow them
        self.retry: dict[int, int] = {}  # job -> its retry's index
        index = 0
        while index < len(self.jobs):
            retry = self.jobs[index].retry
            if retry is not None:
                self.retry[index] = len(self.jobs)
                self.jobs.append(retry)
            index += 1
        self.retries: list[int] = []  # retries asked next, oldest first
        self.reserve = [j.reserve_bytes for j in self.jobs]  # raised after an own OOM
        self.need = [0.0 for _ in self.jobs]  # what a cap hit measured it needs
        self.cap_hits = 0
        self.out: set[int] = set()  # jobs that can never run here
        self.next_draw, self.serial, self.n = 0, 0, 0

    def run(self, n: int) -> Outcome:
        self.n = n
        self._schedule()
        while self.finished < n:
            step = self._next_event()
            if step is None and (self.backlog.items or self.retries):  # an offer only recycled
                # idle contexts, or a trial failed at its start with nothing else running
                self._schedule()
                step = self._next_event()
                if step is None:
                    raise RuntimeError(f"the replay is stuck with {len(self.backlog)} waiting")
            if step is None:  # nothing waits, nothing runs: every job is out
                return self._outcome(math.inf)
            self._advance(step)
            self._schedule()
        return self._outcome(self.now)

    def _outcome(self, wall_s: float) -> Outcome:
        return Outcome(
            self.finished,
            wall_s,
            self.ooms,
            self.pre_pruned,
            self.starts,
            self.events,
            cap_hits=self.cap_hits,
        )

    def _next_event(self) -> float | None:
        slow = self._slowdown()
        steps = [r.setup if r.setup > _EPS else r.work * slow for r in self.running.values()]
        settling = [r for r in self.running.values() if r.allocated and r.settles_at > 0]
        steps += [(r.work - r.settles_at) * slow for r in settling]
        steps += [t - self.now for t in self.idle_at.values() if t > self.now + _EPS]
        return max(0.0, min(steps)) if steps else None

    def _slowdown(self) -> float:
        working = [self.jobs[r.job].demand for r in self.running.values() if r.allocated]
        return max(1.0, sum(working))

    def _advance(self, step: float) -> None:
        slow = self._slowdown()
        self.now += step
        for key, r in list(self.running.items()):
            if r.setup > _EPS:
                r.setup -= step
                if r.setup <= _EPS and not self._allocate(key, r):
                    continue
            elif r.allocated:
                r.work -= step / slow
            if r.allocated and r.work <= r.settles_at + _EPS:  # settled: holds its peak
                r.settles_at = -1.0
                settled = self.jobs[r.job].settled_bytes - self.cards.context_bytes
                self.sched.books.settle(key, int(settled))
            if r.allocated and r.work <= _EPS:
                self._end(key, r, finished=True)

    def _allocate(self, key: int, r: _Run) -> bool:
        """The trial's first allocation: False if it runs out of memory."""
        job = self.jobs[r.job]
        r.setup = 0.0
        if self.policy.aware:
            fits = job.peak_bytes <= r.cap
        else:
            fits = self._held(r.worker) + job.steady_bytes <= self.cards.capacity_bytes
        if fits:
            r.allocated = True
            return True
        if self.policy.overcommit and job.peak_bytes <= self.alone:  # its own cap: asked again
            self.cap_hits += 1
            self.need[r.job] = max(self.need[r.job], job.peak_bytes)
            self.retries.insert(0, r.job)
            lost = self.now - r.start
            self.durations.observe(
                job.params, {Attr.END_REASON: EndReason.CAP_EXCEEDED, Attr.DURATION_S: lost}
            )
            self._end(key, r, finished=False, lost_s=lost)
            return False
        self.ooms += 1
        if r.job in self.retry:  # with twice the micro-batches, next
            self.retries.append(self.retry[r.job])
        if job.peak_bytes > self.alone:  # not even alone: pre-pruned (or split) from now on
            self.out.add(r.job)
        self.reserve[r.job] = max(self.reserve[r.job], job.peak_bytes)
        self._end(key, r, finished=False)
        return False

    def _held(self, worker: int) -> float:
        """What the card of ``worker`` holds besides it: allocated peaks, other contexts."""
        device = self.bound[worker]
        busy = {r.worker: r for r in self.running.values() if r.allocated}
        held = 0.0
        for w, d in self.bound.items():
            if d != device or w == worker:
                continue
            held += self.jobs[busy[w].job].steady_bytes if w in busy else self.cards.context_bytes
        return held

    def _end(self, key: int, r: _Run, finished: bool, lost_s: float | None = None) -> None:
        del self.running[key]
        self.sched.books.release(key)
        self.idle_at[r.worker] = self.now + self.gap_s
        duration = self.now - r.start if finished else None
        self.events.append(Event(Step.END, self.now, key, duration_s=duration, lost_s=lost_s))
        if finished:
            self.finished += 1
            job = self.jobs[r.job]
            seconds = {Attr.END_REASON: EndReason.COMPLETE, Attr.DURATION_S: duration}
            self.durations.observe(job.params, seconds)

    def _slots(self) -> list[Slot[int]]:
        busy = {r.worker for r in self.running.values()}
        return [
            Slot(w, w not in busy and self.idle_at[w] <= self.now + _EPS, d)
            for w, d in self.bound.items()
        ]

    def _draw(self) -> int | None:
        """A retry asked for, else the next job that may still run, in order, cyclically (as
        the micro-batches it runs as where it cannot fit alone); None if none may."""
        if self.retries:
            return self.retries.pop(0)
        for _ in range(self.drawn):
            index = self.next_draw % self.drawn
            self.next_draw += 1
            while index in self.retry and (index in self.out or self._too_big(index)):
                index = self.retry[index]  # as hpo's gate picks the fewest micro-batches
            if index in self.out:
                continue
            if self._too_big(index):
                self.pre_pruned += 1
                self.out.add(index)
                continue
            return index
        return None

    def _too_big(self, index: int) -> bool:
        """Whether hpo's gate would not run job ``index`` as it is: its reservation exceeds
        what a lone trial may hold, under memory-aware admission or where the gate knows the
        job's memory (it splits and pre-prunes whatever the admission)."""
        if not self.policy.aware and not self.jobs[index].gate_knows:
            return False  # as it ran: the gate learns it from its OOM
        return self.reserve[index] > self.alone

    def _schedule(self) -> None:
        """As the supervisor: waiting trials in queue order, then new ones while they start."""
        self.events.append(Event(Step.OFFER, self.now))
        for item in self.backlog.queue():
            self._offer(item)
        while not self.backlog.full and any(s.idle for s in self._slots()):
            if self.finished + len(self.running) + len(self.backlog) >= self.n:
                return  # every slot of the target is claimed (as the storage's claim does)
            index = self._draw()
            if index is None:
                return
            self.serial += 1
            estimate = self._estimate(index)
            item = Waiting(index, dict(self.jobs[index].params), estimate, number=self.serial)
            point, upper = estimate.point_bytes, estimate.upper_bytes
            self.events.append(Event(Step.ASK, self.now, self.serial, index, upper, None, point))
            self.step.add(item)
            failed = self.ooms + self.cap_hits
            if self._offer(item).decision is not Decision.ADMIT:
                return
            if self.ooms + self.cap_hits > failed:  # out of memory at once (no start-up):
                return  # time passes before the next start, or the same ones fail forever

    def _estimate(self, index: int) -> Estimate:
        """What admission knows of job ``index``: its reservation as the upper estimate, its
        point where given (overcommit shades towards it), and what a cap hit measured."""
        upper = self.reserve[index]
        point = self.jobs[index].point_bytes
        point = upper if point is None or not self.policy.overcommit else min(point, upper)
        estimate = Estimate(point, upper, EstimateSource.KNOWN, 1)
        return with_need(estimate, self.need[index]) if self.need[index] else estimate

    def _offer(self, item: Waiting[int]) -> Placement[int]:
        placement = self.step.decide(item, self._slots())
        for worker in placement.reclaim:  # recycled at once (a real respawn takes a second)
            self.bound[worker] = None
        if placement.decision is Decision.ADMIT:
            self.step.start(item, placement)
            self._start(item, placement)
        return placement

    def _start(self, item: Waiting[int], placement: Placement[int]) -> None:
        serial, index = item.number, item.trial
        job = self.jobs[index]
        worker = placement.worker
        assert worker is not None  # admitted
        self.bound[worker] = placement.device
        self.starts.append(Start(self.now, serial, index, placement.device, worker))
        cap = placement.cap_bytes or self.cards.capacity_bytes
        run = _Run(worker, index, job.setup_s, job.work_s, self.now, cap)
        if self.policy.aware and job.settle_after is not None:
            run.settles_at = job.work_s * (1.0 - job.settle_after)
        self.running[serial] = run
        if job.setup_s <= _EPS:
            self._allocate(serial, run)

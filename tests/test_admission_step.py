"""The supervisor's dispatch and the replay (``hpo plan``, the packing bound) decide with one
admission step: driven with the same events, they start the same trials on the same devices
and workers, in the same order."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from hpo.contract import Attr, Decision, EndReason
from hpo.devices import GIB
from hpo.execution.protocol import AskedTrial, Assignment
from hpo.memory import Estimate, EstimateSource
from hpo.scheduling import AdmissionScheduler, Backlog, DurationModel, RamBudget, Slot, Waiting
from hpo.scheduling.replay import Cards, Job, Outcome, Policy, Step, _Card, replay
from hpo.scheduling.step import AdmissionStep
from hpo.supervisor.checkpoints import CheckpointStore
from hpo.supervisor.dispatch import Dispatcher
from hpo.supervisor.launcher import LaunchModels

CTX = int(0.5 * GIB)
MAX_WAITING, MAX_BYPASS = 8, 8


@dataclass(eq=False)
class FakeWorker:
    """A worker process as dispatch sees it: a slot, busy while it holds an assignment."""

    slot: int
    assignment: Assignment | None = None

    @property
    def pid(self) -> int:
        return 10_000 + self.slot

    @property
    def idle(self) -> bool:
        return self.assignment is None


class FakePool:
    """Workers that take assignments; a recycled one is replaced at once, as the replay does."""

    def __init__(self, n: int) -> None:
        self.workers = [FakeWorker(slot) for slot in range(n)]
        self.retiring: list[FakeWorker] = []
        self.started: list[tuple[int, int, int]] = []  # (trial number, device, worker slot)

    def assign(self, worker: FakeWorker, assignment: Assignment) -> bool:
        worker.assignment = assignment
        assert assignment.device is not None
        device = int(assignment.device.split(":")[1])
        self.started.append((assignment.trial_number, device, worker.slot))
        return True

    def retire(self, worker: FakeWorker) -> FakeWorker:
        new = FakeWorker(worker.slot)
        self.workers[self.workers.index(worker)] = new
        return new


class NoGate:
    """No memory gate: every reservation is known up front, as in the replay."""

    active = False

    def hold_back(self, params: Any, pending: Iterable[Any]) -> None:
        return None

    def ended(self, number: int) -> None:
        pass


class NoStore:
    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        pass


def _drive(
    outcome: Outcome, jobs: list[Job], cards: Cards, par: int, overcommit: bool = False
) -> list[tuple[int, int, int]]:
    """Feed the replay's events to the supervisor's dispatch; the starts it makes."""
    now = [0.0]
    devices = [_Card(cards.capacity_bytes, i) for i in range(cards.count)]
    sched = AdmissionScheduler(
        devices, cards.margin_frac, cards.context_bytes, True, lambda: now[0], overcommit
    )
    durations = DurationModel(["family"])
    ram = RamBudget([], [], default_gib=0.0, margin_frac=0.0)
    models = LaunchModels(devices, NoGate(), sched, ram, durations)  # type: ignore[arg-type]
    backlog = Backlog(MAX_BYPASS, MAX_WAITING)
    dispatch = Dispatcher(NoStore(), models, backlog, CheckpointStore(None))  # type: ignore[arg-type]
    pool = FakePool(par)
    for event in outcome.events:
        now[0] = event.at_s
        if event.step is Step.OFFER:
            dispatch.start_waiting(pool)  # type: ignore[arg-type]
        elif event.step is Step.ASK:
            params = dict(jobs[event.job].params)
            trial = AskedTrial(event.number, params, {})
            up = event.reserve_bytes
            estimate = Estimate(event.point_bytes or up, up, EstimateSource.KNOWN, 1)
            item = Waiting(trial, params, estimate, number=event.number, trial_id=event.number)
            dispatch.add(pool, item)  # type: ignore[arg-type]
        else:  # an end: its worker is idle again, its duration learned if it finished
            running = dispatch.release(event.number)
            if running is None:  # the replay ran a trial dispatch did not start: they differ
                break
            running.worker.assignment = None
            if event.duration_s is not None:
                seconds = {Attr.END_REASON: EndReason.COMPLETE, Attr.DURATION_S: event.duration_s}
                durations.observe(running.params, seconds)
            if event.lost_s is not None:  # over its cap: what it lost, as the launcher learns
                lost = {Attr.END_REASON: EndReason.CAP_EXCEEDED, Attr.DURATION_S: event.lost_s}
                durations.observe(running.params, lost)
    return pool.started


def _jobs(seed: int, n: int) -> list[Job]:
    """Trials of three families with reservations from 2 to 20 GiB and varied lengths."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(n):
        family = rng.choice(["s", "m", "l"])
        gib = {"s": rng.uniform(2, 5), "m": rng.uniform(6, 11), "l": rng.uniform(12, 20)}[family]
        work = {"s": 20.0, "m": 45.0, "l": 90.0}[family] * rng.uniform(0.8, 1.2)
        peak = gib * GIB
        jobs.append(Job({"family": family}, peak, peak, rng.uniform(1, 4), work, 0.4))
    return jobs


@pytest.mark.parametrize(("seed", "count", "par"), [(0, 1, 4), (1, 1, 8), (2, 2, 6), (3, 2, 3)])
def test_dispatch_and_replay_start_the_same_trials_where_and_when(
    seed: int, count: int, par: int
) -> None:
    jobs = _jobs(seed, 40)
    cards = Cards(int(24 * GIB), count, CTX)
    outcome = replay(jobs, 60, Policy(par, aware=True), cards, 0.0, ["family"])
    assert outcome.finished == 60 and len(outcome.starts) >= 60
    replayed = [(s.number, s.device, s.worker) for s in outcome.starts]
    assert len({device for _, device, _ in replayed}) == count  # every card was used
    assert _drive(outcome, jobs, cards, par) == replayed


def _noisy(seed: int, n: int) -> list[Job]:
    """Jobs whose estimate spans ±12 % around its point and whose runs land anywhere in it."""
    rng = random.Random(seed)
    jobs = []
    for job in _jobs(seed, n):
        point = job.peak_bytes
        peak = point * rng.uniform(0.9, 1.12)
        jobs.append(
            Job(job.params, peak, point * 1.12, job.setup_s, job.work_s, 0.4, point_bytes=point)
        )
    return jobs


@pytest.mark.parametrize(("seed", "count", "par"), [(5, 1, 6), (6, 2, 8)])
def test_under_overcommit_dispatch_and_replay_start_the_same_trials(
    seed: int, count: int, par: int
) -> None:
    """Safe overcommit (quantile reservations, cap hits asked again needing their peak, what
    a cap hit loses learned) is one admission step too."""
    jobs = _noisy(seed, 40)
    cards = Cards(int(24 * GIB), count, CTX)
    policy = Policy(par, aware=True, overcommit=True)
    outcome = replay(jobs, 60, policy, cards, 0.0, ["family"])
    assert outcome.finished == 60 and outcome.cap_hits > 0 and outcome.ooms == 0
    replayed = [(s.number, s.device, s.worker) for s in outcome.starts]
    assert _drive(outcome, jobs, cards, par, overcommit=True) == replayed
    assert _drive(outcome, jobs, cards, par, overcommit=False) != replayed  # it can differ


def test_the_drive_tells_a_different_admission_apart() -> None:
    """The comparison can fail: a replay whose backlog lets the oldest trial be overtaken
    fewer times decides otherwise than the dispatch driven with its events."""
    jobs = _jobs(4, 40)
    cards = Cards(int(24 * GIB), 1, CTX)
    outcome = replay(jobs, 60, Policy(4, aware=True), cards, 0.0, ["family"], max_bypass=0)
    replayed = [(s.number, s.device, s.worker) for s in outcome.starts]
    assert _drive(outcome, jobs, cards, 4) != replayed


def test_a_trial_whose_ram_does_not_fit_waits_while_others_run() -> None:
    """The step's RAM check: admitted by memory, held back by host RAM while a running trial
    may free it, and started alone (the reason says so) when nothing runs."""
    now = [0.0]
    sched = AdmissionScheduler([_Card(int(24 * GIB), 0)], 0.05, CTX, True, lambda: now[0])
    backlog = Backlog(MAX_BYPASS, MAX_WAITING)
    step = AdmissionStep(backlog, sched, DurationModel([]), ram=lambda p, w: (False, "no RAM"))
    estimate = Estimate(2 * GIB, 2 * GIB, EstimateSource.KNOWN, 1)
    first = Waiting(0, {}, estimate, number=0)
    backlog.add(first)
    slots = [Slot(0, True, None), Slot(1, True, None)]
    alone = step.decide(first, slots)
    assert alone.decision is Decision.ADMIT and "starts alone although it no RAM" in alone.reason
    step.start(first, alone)
    second = Waiting(1, {}, estimate, number=1)
    backlog.add(second)
    waits = step.decide(second, [Slot(0, False, 0), Slot(1, True, None)])
    assert waits.decision is Decision.WAIT and waits.reason == "no RAM"

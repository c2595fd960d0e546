"""Admission by predicted memory: placement, over-commit, backfill and starvation, par=auto.

These drive :class:`~hpo.scheduling.AdmissionScheduler` and :class:`~hpo.scheduling.Backlog` as
the supervisor does, with simulated cards and a discrete clock; tests/test_packing.py runs the
real supervisor.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hpo.contract import Decision
from hpo.devices import GIB, SimulatedGpu, SimulatedGpuSpec
from hpo.memory import Estimate
from hpo.scheduling.admission import AdmissionScheduler, Placement, Slot
from hpo.scheduling.backlog import Backlog, Waiting, place_next

CTX = int(0.5 * GIB)


def cards(tmp_path: Path, n: int = 1, gib: float = 24.0) -> list[SimulatedGpu]:
    spec = SimulatedGpuSpec(capacity_gib=gib, context_gib=0.5)
    return [SimulatedGpu(i, spec, tmp_path / "sim") for i in range(n)]


def est(gib: float) -> Estimate:
    """An estimate whose upper bound is ``gib`` (context included)."""
    return Estimate(gib * GIB * 0.97, gib * GIB, "fit", 3)


class Workers:
    """Worker slots as the supervisor keeps them: idle or busy, bound to a device once used."""

    def __init__(self, n: int) -> None:
        self.bound: dict[int, int | None] = dict.fromkeys(range(n))
        self.busy: set[int] = set()

    def slots(self) -> list[Slot]:
        return [Slot(k, k not in self.busy, d) for k, d in self.bound.items()]

    def run(self, sched: AdmissionScheduler, number: int, gib: float) -> Placement:
        """Place a trial of ``gib``, which must be admitted, and start it as the supervisor does."""
        placement = sched.place(est(gib), self.slots())
        assert placement.decision is Decision.ADMIT and placement.device is not None
        sched.books.hold(number, placement)
        self.busy.add(placement.worker)
        self.bound[placement.worker] = placement.device
        return placement


def test_a_trial_goes_to_the_device_with_room_and_records_its_reservation(
    tmp_path: Path,
) -> None:
    sched = AdmissionScheduler(cards(tmp_path, 2), margin_frac=0.05, context_bytes=CTX)
    workers = Workers(4)
    first = workers.run(sched, 0, 20)
    second = sched.place(est(20), workers.slots())
    assert second.decision is Decision.ADMIT
    assert second.device != first.device  # the other card: the first is full
    assert first.reserve_bytes == int(20 * GIB) - CTX
    assert first.cap_bytes is not None and first.cap_bytes > 20 * GIB  # reservation + margin


def test_what_does_not_fit_waits_and_says_why(tmp_path: Path) -> None:
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    workers = Workers(2)
    workers.run(sched, 0, 19)
    waiting = sched.place(est(6), workers.slots())
    assert waiting.decision is Decision.WAIT
    assert "does not fit" in waiting.reason and "sim:0" in waiting.reason


def test_a_trial_with_no_estimate_runs_alone(tmp_path: Path) -> None:
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    workers = Workers(2)
    workers.run(sched, 0, 2)
    unknown = sched.place(None, workers.slots())
    assert unknown.decision is Decision.WAIT and "alone" in unknown.reason
    sched.books.release(0)
    workers.busy.clear()
    workers.bound[1] = 0  # an idle neighbour holds its context: it is recycled first
    freeing = sched.place(None, workers.slots())
    assert freeing.decision is Decision.WAIT and len(freeing.reclaim) == 1
    workers.bound[freeing.reclaim[0]] = None
    alone = sched.place(None, workers.slots())
    assert alone.decision is Decision.ADMIT  # the whole budget but its own context
    assert alone.reserve_bytes == sched.books.budget(0) - CTX


def test_a_trial_that_fits_an_empty_card_only_alone_runs_alone_and_blocks_nothing_forever(
    tmp_path: Path,
) -> None:
    """A spiky trial whose upper estimate is under the budget, but not with its spike's slot,
    can never fit beside anything: it runs alone under the lone cap. It once waited for memory
    no trial could free, on an empty card, and held the queue behind it (a supervisor hung)."""
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    budget = sched.books.budget(0)
    spiky = Estimate(
        budget - GIB, budget - int(0.5 * GIB), "fit", 3,
        spike_bytes=int(1.5 * GIB), spike_floor_bytes=int(0.5 * GIB),
    )  # fmt: skip
    backlog = Backlog(max_bypass=8, limit=8)
    backlog.add(Waiting(None, {"n": 0}, spiky, number=0))
    backlog.add(Waiting(None, {"n": 1}, est(3), number=1))
    workers = Workers(2)
    first = place_next(backlog, sched, backlog.queue()[0], workers.slots(), None)
    assert first.decision is Decision.ADMIT, first.reason
    assert first.cap_bytes is not None and first.cap_bytes > budget  # the lone cap
    assert first.reserve_bytes == budget - CTX  # the whole card: nothing starts beside it
    sched.books.hold(0, first)
    backlog.started(backlog.queue()[0])
    workers.busy.add(first.worker)
    workers.bound[first.worker] = 0
    beside = place_next(backlog, sched, backlog.queue()[0], workers.slots(), None)
    assert beside.decision is Decision.WAIT
    sched.books.release(0)
    workers.busy.clear()
    after = place_next(backlog, sched, backlog.queue()[0], workers.slots(), None)
    assert after.decision is Decision.ADMIT


def test_idle_workers_are_recycled_when_their_contexts_are_in_the_way(tmp_path: Path) -> None:
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    workers = Workers(8)
    for key in workers.bound:
        workers.bound[key] = 0  # all touched the card: 4 GiB of contexts
    placement = sched.place(est(20), workers.slots())
    assert placement.decision is Decision.WAIT
    assert placement.reclaim and "recycling" in placement.reason
    for key in placement.reclaim:  # the supervisor recycles them; successors are unbound
        workers.bound[key] = None
    assert sched.place(est(20), workers.slots()).decision is Decision.ADMIT


def test_memory_blind_admission_starts_whatever_comes(tmp_path: Path) -> None:
    sched = AdmissionScheduler(cards(tmp_path), 0.05, CTX, pack=False)
    workers = Workers(3)
    for n in range(3):
        placement = sched.place(est(20), workers.slots())
        assert placement.decision is Decision.ADMIT and placement.cap_bytes is None
        sched.books.hold(n, placement)
        workers.busy.add(placement.worker)
    assert sched.place(est(1), workers.slots()).reason == "no idle worker"


@pytest.mark.parametrize("seed", range(5))
def test_admission_never_over_commits_under_concurrent_completions(
    tmp_path: Path, seed: int
) -> None:
    """Random trials and random completions, several per step: the books never pass a card's
    budget, counting every bound worker's context, and every trial eventually starts."""
    rng = random.Random(seed)
    devices = cards(tmp_path, 2)
    sched = AdmissionScheduler(devices, margin_frac=0.05, context_bytes=CTX)
    backlog = Backlog(max_bypass=4, limit=6)
    workers = Workers(6)
    running: dict[int, int] = {}  # trial number -> worker
    started, number = [], 0
    for _ in range(400):
        for trial in rng.sample(sorted(running), k=min(len(running), rng.randint(0, 3))):
            sched.books.release(trial)
            workers.busy.discard(running.pop(trial))
        while not backlog.full and number < 150:
            backlog.add(
                Waiting(None, {"n": number}, est(rng.choice([2.5, 5, 10, 14, 20])), number=number)
            )
            number += 1
        schedule(sched, backlog, workers, running, started)
        for index in range(len(devices)):
            contexts = sum(d == index for d in workers.bound.values()) * CTX
            assert contexts + sched.books.reserved(index) <= sched.books.budget(index)
    assert len(started) >= 140  # nothing stuck behind a big trial


def schedule(
    sched: AdmissionScheduler,
    backlog: Backlog,
    workers: Workers,
    running: dict[int, int],
    started: list[int],
    durations: dict[int, float] | None = None,
) -> None:
    """The supervisor's pass over the backlog (in its queue order) with a fake dispatch;
    ``durations`` are the expected seconds of trials by number (unknown when missing)."""
    import time

    durations = durations or {}

    def act(item: Waiting, placement: Placement) -> bool:
        for key in placement.reclaim:  # recycled: its successor has touched nothing
            workers.bound[key] = None
        if placement.decision is not Decision.ADMIT:
            return False
        n = item.params["n"]
        ends_at = time.monotonic() + durations.get(n, float("inf"))
        sched.books.hold(n, placement, ends_at)
        running[n] = placement.worker
        workers.busy.add(placement.worker)
        workers.bound[placement.worker] = placement.device
        started.append(n)
        return True

    for item in backlog.queue():
        duration = durations.get(item.params["n"])
        if act(item, place_next(backlog, sched, item, workers.slots(), duration)):
            backlog.started(item)


def end(sched: AdmissionScheduler, workers: Workers, running: dict[int, int], n: int) -> None:
    sched.books.release(n)
    workers.busy.discard(running.pop(n))


def test_the_largest_waiting_trial_is_protected_and_smaller_ones_backfill_in_time(
    tmp_path: Path,
) -> None:
    """A 20 GiB trial waits behind a running 10 GiB one (60 s left): its memory is set aside.
    2.5 GiB trials expected to end within those 60 s start meanwhile; longer or unknown ones
    wait. When the 10 GiB one ends, the 20 GiB one starts first, ahead of older small ones."""
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    backlog = Backlog(max_bypass=8, limit=8)
    workers = Workers(6)
    running: dict[int, int] = {}
    started: list[int] = []
    durations = {0: 60.0, 1: 120.0, 2: 10.0, 3: 10.0, 4: 300.0}  # 5: unknown
    for n, gib in ((0, 10), (4, 2.5), (5, 2.5), (1, 20), (2, 2.5), (3, 2.5)):
        backlog.add(Waiting(None, {"n": n}, est(gib), number=n))
        if n == 0:
            schedule(sched, backlog, workers, running, started, durations)
    schedule(sched, backlog, workers, running, started, durations)
    assert backlog.queue()[0].params["n"] == 1  # the largest comes first
    assert started == [0, 2, 3]  # only the short ones borrowed the memory set aside
    for n in (2, 3):
        end(sched, workers, running, n)
    schedule(sched, backlog, workers, running, started, durations)
    assert started == [0, 2, 3]  # 4 and 5 would fit now, but would delay the protected one
    end(sched, workers, running, 0)
    schedule(sched, backlog, workers, running, started, durations)
    assert started[3] == 1  # the big one first, though 4 and 5 are older
    assert backlog.items[0].params == {"n": 4} and backlog.items[0].bypassed == 3


def test_a_trial_overtaken_max_bypass_times_comes_first_whatever_its_size(
    tmp_path: Path,
) -> None:
    """Largest-first never starves a small trial: once overtaken ``max_bypass`` times it is
    offered first and protected, and the bigger trial behind it waits for it."""
    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    backlog = Backlog(max_bypass=1, limit=8)
    workers = Workers(6)
    running: dict[int, int] = {}
    started: list[int] = []
    backlog.add(Waiting(None, {"n": 0}, est(18), number=0))
    schedule(sched, backlog, workers, running, started)
    for n, gib in ((1, 5), (2, 10), (3, 10)):  # 1 is oldest, and does not fit beside 0
        backlog.add(Waiting(None, {"n": n}, est(gib), number=n))
    schedule(sched, backlog, workers, running, started)
    assert started == [0]
    end(sched, workers, running, 0)
    schedule(sched, backlog, workers, running, started)
    # 2 (largest) starts and overtakes 1, which is then starving: it goes before 3, which
    # no longer fits beside 2 and 1's reservation.
    assert started == [0, 2, 1]
    assert [item.params["n"] for item in backlog.items] == [3]


def test_backlog_counts_bypasses_and_rejects_a_negative_limit() -> None:
    backlog = Backlog(max_bypass=1, limit=3)
    a, b, c = (Waiting(None, {}, None, number=n) for n in range(3))
    for item in (a, b, c):
        backlog.add(item)
    assert backlog.full and not backlog.may_ask()
    backlog.started(c)
    assert backlog.may_ask() and not backlog.may_ask(asking=1)  # one being asked fills it
    assert a.bypassed == b.bypassed == 1 and backlog.starving
    with pytest.raises(ValueError, match="max_bypass"):
        Backlog(max_bypass=-1, limit=1)


def test_a_short_trial_may_use_memory_set_aside_if_it_ends_in_time(tmp_path: Path) -> None:
    """EASY backfill: the protected trial needs the memory when the running one ends; a
    trial expected to end before that may borrow it, a longer one may not."""
    import time

    sched = AdmissionScheduler(cards(tmp_path), margin_frac=0.05, context_bytes=CTX)
    workers = Workers(4)
    running = sched.place(est(10), workers.slots())
    sched.books.hold(0, running, ends_at=time.monotonic() + 60)
    workers.busy.add(running.worker)
    workers.bound[running.worker] = 0
    protect = sched.protection(est(20), workers.slots())
    assert protect is not None and protect.nbytes == int(20 * GIB)
    assert protect.until == pytest.approx(time.monotonic() + 60, abs=1)
    long = sched.place(est(2.5), workers.slots(), protect, duration_s=120)
    assert long.decision is Decision.WAIT
    short = sched.place(est(2.5), workers.slots(), protect, duration_s=10)
    assert short.decision is Decision.ADMIT
    unknown = sched.place(est(2.5), workers.slots(), protect, duration_s=None)
    assert unknown.decision is Decision.WAIT


def test_ram_budget_waits_for_ram_and_learns_what_trials_need(tmp_path: Path) -> None:
    import os

    from hpo.scheduling.ram import RamBudget

    ram = RamBudget(["batch_size"], ["model"], default_gib=1e6, margin_frac=0.05)
    fits, why = ram.fits({"model": "a", "batch_size": 8}, os.getpid())
    assert not fits and "needs" in why and "RAM" in why
    for bs in (8, 16):
        ram.observe(
            {"model": "a", "batch_size": bs}, {"end_reason": "complete", "peak_rss_mib": 100.0 + bs}
        )
    ram.observe({"model": "a", "batch_size": 32}, {"end_reason": "oom", "peak_rss_mib": 1e9})
    assert ram.need({"model": "a", "batch_size": 8}) < 200 * 2**20
    assert ram.fits({"model": "a", "batch_size": 8}, os.getpid())[0]
    assert ram.largest_need() == int(116 * 2**20)


def test_durations_are_learned_per_memory_group() -> None:
    from hpo.scheduling.durations import DurationModel

    model = DurationModel(["model"])
    assert model.predict({"model": "a"}) is None
    model.observe({"model": "a"}, {"end_reason": "complete", "duration_s": 2.0})
    model.observe({"model": "a"}, {"end_reason": "pruned", "duration_s": 1.0})
    model.observe({"model": "a"}, {"end_reason": "oom", "duration_s": 0.1})
    assert model.predict({"model": "a", "lr": 1}) == pytest.approx(1.5)
    assert model.predict({"model": "b"}) is None


def test_par_auto_is_the_tightest_of_ram_device_memory_and_max_par(tmp_path: Path) -> None:
    from hpo.devices import CpuDevice
    from hpo.memory import MemoryGate, Observation
    from hpo.scheduling.autopar import auto_par
    from hpo.scheduling.ram import RamBudget

    space = {
        "model": {"type": "categorical", "choices": ["s", "l"]},
        "batch_size": {"type": "categorical", "choices": [8, 64]},
    }
    devices = cards(tmp_path)
    gate = MemoryGate(devices, ["batch_size"], ["model"], 0.05, context_bytes=CTX)
    roomy = RamBudget(["batch_size"], ["model"], default_gib=1e-3, margin_frac=0.05)
    par, why = auto_par(devices, gate, roomy, space, (["batch_size"], ["model"]), 8)
    assert par == 8 and "max_par" in why  # nothing learned: the device sets no limit
    for model, base in (("s", 2.0), ("l", 8.0)):
        for bs in (8, 64):
            peak = (base + 0.01 * bs) * GIB
            gate.estimator.observe(Observation({"model": model, "batch_size": bs}, peak))
    par, why = auto_par(devices, gate, roomy, space, (["batch_size"], ["model"]), 32)
    assert 9 <= par <= 11 and "device memory" in why  # ≈ 22.8 GiB / 2.1 GiB
    tight = RamBudget(["batch_size"], ["model"], default_gib=1e6, margin_frac=0.05)
    par, why = auto_par(devices, gate, tight, space, (["batch_size"], ["model"]), 8)
    assert par == 1 and "limited by RAM" in why
    cpu_gate = MemoryGate([CpuDevice()], ["batch_size"], ["model"], 0.05)
    par, why = auto_par([CpuDevice()], cpu_gate, roomy, space, (["batch_size"], ["model"]), 64)
    assert "CPUs" in why and par >= 1

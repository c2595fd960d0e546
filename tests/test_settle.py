"""Settling: a running trial whose peak stopped growing gives back what it reserved beyond it."""

from __future__ import annotations

import datetime
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.contract import Attr, Decision
from hpo.devices import GIB, MIB, SimulatedGpu
from hpo.devices.simulated import SimulatedGpuSpec
from hpo.execution.protocol import Assignment, Settled
from hpo.execution.settle import Settler
from hpo.memory import MemoryGate, micro
from hpo.scheduling.admission import DeviceBooks, Placement
from hpo.scheduling.settle import DEFAULT_FRAC, MIN_FRAC, SettleModel, settle
from tests.conftest import run_hpo


class _Probe:
    """The trial's device peaks so far, as the runner measures them."""

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self.steady_mib: float | None = None  # outside declared spikes, once one happened

    def attrs(self) -> dict[str, Any]:
        out = {} if self.peak_mib is None else {Attr.PEAK_VRAM_MIB: self.peak_mib}
        return out if self.steady_mib is None else {**out, Attr.STEADY_VRAM_MIB: self.steady_mib}


class _Device:
    has_memory = True

    def __init__(self) -> None:
        self.caps: list[int | None] = []

    def cap_process(self, cap_bytes: int | None) -> None:
        self.caps.append(cap_bytes)


def _settler(
    frac: float | None = 0.05,
    resumed: bool = False,
    cap: int = 20 * GIB,
    spike: int = 0,
    grew_at: Callable[[], float | None] | None = None,
) -> tuple[Settler, _Probe, _Device, list[object]]:
    sent: list[object] = []
    assignment = Assignment(
        7, 3, None, "sim:0", cap, settle_frac=frac, cap_slack_bytes=GIB, spike_bytes=spike
    )
    probe, device = _Probe(), _Device()
    settler = Settler(assignment, probe.attrs, device, sent.append, resumed, sent.append, grew_at)  # type: ignore[arg-type]
    return settler, probe, device, sent  # type: ignore[arg-type]


def test_a_trial_settles_when_its_peak_did_not_grow_over_a_report_interval() -> None:
    settler, probe, device, sent = _settler()
    probe.peak_mib = 4000.0
    settler.on_report(7, 0)  # weights only (a report before training)
    probe.peak_mib = 8000.0
    settler.on_report(7, 1)  # the first epoch grew it: not yet
    assert sent == [] and device.caps == []
    settler.on_report(99, 2)  # another trial's report (same worker, earlier trial): ignored
    assert sent == []
    settler.on_report(7, 2)  # a whole epoch without growth: settles
    held = int(8000 * MIB * 1.05)
    assert sent[0] == Settled(3, held)  # told to the supervisor
    assert isinstance(sent[1], dict)  # recorded on the running trial at once (hpo status)
    assert sent[1][Attr.VRAM_SETTLED_MIB] == round(held / MIB, 1)
    assert device.caps == [held + GIB]  # its cap follows: growing past it is its own OOM
    probe.peak_mib = 8200.0
    settler.on_report(7, 3)  # once only
    assert len(sent) == 2
    attrs = settler.attrs(probe.attrs())
    assert attrs[Attr.VRAM_SETTLED_MIB] == round(held / MIB, 1)
    assert attrs[Attr.SETTLE_PEAK_VRAM_MIB] == 8000.0
    assert attrs[Attr.SETTLE_GROWTH_FRAC] == 0.025  # what the headroom is learned from


class _Clock:
    """The settler's clock, set by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("grew_at", "settles_at"),
    [
        (101.0, 1),  # a start-up of 1 s, then flat for 9 s of the 10 s so far: at the first
        (108.0, 2),  # still growing late in the first epoch: at the second, as without samples
        (None, 2),  # nothing sampled (a device the probe cannot read): at the second
    ],
)
def test_a_trial_flat_since_early_in_its_first_epoch_settles_at_its_first_report(
    monkeypatch: pytest.MonkeyPatch, grew_at: float | None, settles_at: int
) -> None:
    clock = _Clock(100.0)
    monkeypatch.setattr("hpo.execution.settle.time", clock)
    settler, probe, device, sent = _settler(grew_at=lambda: grew_at)
    probe.peak_mib = 8000.0
    for step in (1, 2):
        clock.now += 10.0
        settler.on_report(7, step)
        if sent:
            break
    assert sent[0] == Settled(3, int(8000 * MIB * 1.05)) and step == settles_at
    assert isinstance(sent[1], dict) and sent[1][Attr.SETTLED_AFTER_S] == 10.0 * settles_at


def test_a_trial_with_a_spike_slot_settles_its_steady_memory() -> None:
    settler, probe, device, sent = _settler(spike=3 * GIB)
    probe.peak_mib, probe.steady_mib = 11000.0, 6000.0  # an evaluation added 5000 MiB
    settler.on_report(7, 1)
    probe.peak_mib = 11500.0  # a larger evaluation; the steady part did not grow
    settler.on_report(7, 2)
    held = int(6000 * MIB * 1.05)
    assert sent[0] == Settled(3, held)  # its spike slot stays booked on the device
    recorded = sent[1]
    assert isinstance(recorded, dict)
    assert recorded[Attr.VRAM_SETTLED_MIB] == round((held + 3 * GIB) / MIB, 1)  # slot included
    assert device.caps == [held + 3 * GIB + GIB]  # the cap keeps room for the spike
    probe.steady_mib = 6060.0
    assert settler.attrs(probe.attrs())[Attr.SETTLE_GROWTH_FRAC] == 0.01  # steady to steady


@pytest.mark.parametrize(
    ("frac", "resumed", "cap", "why"),
    [
        (None, False, 20 * GIB, "the supervisor did not ask (memory-blind, or settle off)"),
        (0.05, True, 20 * GIB, "resumed: saved epochs are reported again before training"),
        (0.05, False, 8 * GIB, "it holds about what it reserved: nothing to give back"),
    ],
)
def test_no_settling(frac: float | None, resumed: bool, cap: int, why: str) -> None:
    settler, probe, device, sent = _settler(frac, resumed, cap)
    probe.peak_mib = 7000.0
    for step in range(4):
        settler.on_report(7, step)
    assert sent == [] and device.caps == [] and settler.attrs(probe.attrs()) == {}, why


def test_books_shrink_a_settled_reservation_and_keep_the_spike_slot() -> None:
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), Path("/nonexistent-sim-dir"))
    books = DeviceBooks([card], 0.05, int(0.5 * GIB))
    books.hold(1, Placement(Decision.ADMIT, "", 0, reserve_bytes=20 * GIB))
    books.hold(2, Placement(Decision.ADMIT, "", 0, reserve_bytes=4 * GIB, spike_bytes=GIB))
    assert books.reserved(0) == 25 * GIB
    assert settle(books, Settled(1, int(8.5 * GIB)))  # context included in the message
    assert books.reserved(0) == 13 * GIB
    assert not settle(books, Settled(1, 12 * GIB))  # never grows back
    assert settle(books, Settled(2, int(2.5 * GIB)))  # its steady part; the slot stays
    assert books.reserved(0) == 11 * GIB
    assert not settle(books, Settled(5, GIB))  # ended meanwhile
    assert books.reserved(0) == 11 * GIB


def test_the_headroom_is_learned_from_how_much_settled_trials_still_grew() -> None:
    model = SettleModel()
    assert model.frac() == DEFAULT_FRAC
    model.observe({Attr.PEAK_VRAM_MIB: 9000.0})  # never settled: says nothing
    for _ in range(10):
        model.observe({Attr.SETTLE_PEAK_VRAM_MIB: 1000.0, Attr.SETTLE_GROWTH_FRAC: 0.0})
    assert model.frac() == MIN_FRAC  # flat after settling
    model.observe({Attr.SETTLE_PEAK_VRAM_MIB: 1000.0, Attr.SETTLE_GROWTH_FRAC: 0.04})
    assert model.frac() == pytest.approx(0.06)  # half as much again as the largest growth
    model.observe({Attr.SETTLE_PEAK_VRAM_MIB: 1000.0, Attr.END_REASON: "oom"})
    assert model.frac() is None  # a settled trial ran out anyway: no more settling
    assert SettleModel(enabled=False).frac() is None


def test_a_settled_trial_stands_for_its_unmeasured_group_until_it_ends() -> None:
    """Nothing of group ``a`` was measured: its trials reserve the whole card, until one of
    them settles; then they are estimated from what it holds (never pre-pruned by it), and
    after it ended from its measurement alone."""
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), Path("/nonexistent-sim-dir"))
    gate = MemoryGate([card], ["batch_size"], ["model"], 0.05, context_bytes=0.5 * GIB)
    a8, a4, b8 = ({"model": m, "batch_size": bs} for m, bs in (("a", 8), ("a", 4), ("b", 8)))
    assert gate.check(a8).estimate is None
    gate.settled(1, a8, 6 * GIB)
    early = gate.check(a8)
    assert early.decision is Decision.ADMIT and early.estimate is not None
    assert early.estimate.source == "settled" and early.reason == "a trial of its group settled"
    assert 6 * GIB < early.estimate.upper_bytes < 8 * GIB  # its noise margin, not the card
    small = gate.check(a4).estimate
    assert small is not None and small.upper_bytes <= early.estimate.upper_bytes
    assert gate.check(b8).estimate is None  # another group learns nothing from it
    sent = pickle.loads(pickle.dumps(gate))  # a worker's copy: it only pre-prunes
    assert sent.check(a8).estimate is None and sent.check(a8).decision is Decision.ADMIT
    gate.settled(2, a8, 30 * GIB)  # more than the card: admits (never pre-prunes) by it
    assert gate.check(a8).decision is Decision.ADMIT
    gate.ended(1)
    gate.ended(2)
    assert gate.check(a8).estimate is None  # ended unmeasured (e.g. failed): nothing known
    gate.settled(3, a8, 6 * GIB)
    gate.observe(a8, {Attr.END_REASON: "complete", Attr.PEAK_VRAM_MIB: 5000.0})
    measured = gate.check(a8).estimate
    assert measured is not None and measured.source == "one-point"  # the measurement rules


def test_a_settled_trial_at_a_new_size_sizes_its_group_and_holds_nothing_back() -> None:
    """Group ``a`` was measured at batch 8 only: batch 32 waits for the running batch 16 (a
    second size is what tells how it grows). Once batch 16 settled, batch 32 no longer waits,
    and is estimated from both sizes: a fit far tighter than extrapolating from batch 8 alone;
    pre-pruning still weighs only the measurements. After it ended, the measurement rules."""
    card = SimulatedGpu(0, SimulatedGpuSpec(80.0, 0.5), Path("/nonexistent-sim-dir"))
    gate = MemoryGate([card], ["batch_size"], ["model"], 0.05, context_bytes=0.5 * GIB)
    a8, a16, a32 = ({"model": "a", "batch_size": bs} for bs in (8, 16, 32))
    for mib in (10_200.0, 9_800.0):
        gate.observe(a8, {Attr.END_REASON: "complete", Attr.PEAK_VRAM_MIB: mib})
    alone = gate.check(a32).estimate
    assert alone is not None and alone.source == "one-point"
    assert gate.hold_back(a32, [a16]) is not None
    gate.settled(7, a16, 16 * GIB)  # 6 GiB per 8 of batch beyond 4 GiB
    assert gate.hold_back(a32, [a16]) is None
    both = gate.check(a32)
    assert both.decision is Decision.ADMIT and both.estimate is not None
    assert both.estimate.label == "fit+settled"
    assert 28 * GIB <= both.estimate.upper_bytes < alone.upper_bytes - 8 * GIB
    own = gate.check(a8)  # measured within the budget: its own runs' estimate
    assert own.estimate is not None and own.estimate.source == "one-point"
    assert own.estimate.upper_bytes < 10_200 * MIB * 1.15
    gate.ended(7)
    gate.observe(a16, {Attr.END_REASON: "complete", Attr.PEAK_VRAM_MIB: 16_000.0})
    measured = gate.check(a32).estimate
    assert measured is not None and measured.source == "fit"


def test_an_estimate_from_a_settled_trial_does_not_split_a_batch() -> None:
    """A large batch of an unmeasured group whose settled estimate looks beyond the card runs
    whole, as with nothing known, and is measured at its own size (not at a micro-batch)."""
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), Path("/nonexistent-sim-dir"))
    gate = MemoryGate([card], ["batch_size"], ["model"], 0.05, context_bytes=0.5 * GIB)
    gate.settled(1, {"model": "a", "batch_size": 8}, 12 * GIB)
    big = {"model": "a", "batch_size": 64}
    assert gate.check(big).estimate.point_bytes > 24 * GIB  # type: ignore[union-attr]
    c = micro.choose(gate, big, "batch_size", 8)
    k, run, verdict = c.steps, c.params, c.verdict
    assert (k, run["batch_size"], verdict.decision) == (1, 64, Decision.ADMIT)


WORKLOAD = """
name: settle_test
device: {capacity_gib: 24, context_gib: 0.5, count: 1}
family_param: model
epochs: 8
space:
  model: {type: categorical, choices: [a]}
  batch_size: {type: categorical, choices: [8]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
families:
  a:
    peak_gib: [{coef: 5.0}]
    epoch_s: 20.0
    demand: {base: 0.2}
    curve: {ceiling: 0.8, rate: 0.3, best_lr: 1.0e-3, lr_width: 1.0}
"""


def _run(tmp_path: Path, settle: bool) -> list[Any]:
    """Four trials of one configuration, three workers; an upper estimate 60 % above the
    point, so that two trials fit the 24 GiB card by their reservations, three by their peaks
    (reservations of upper estimates: ``memory.overcommit=false``, which would shade them)."""
    tmp_path.mkdir()
    workload = tmp_path / "settle_test.yaml"
    workload.write_text(WORKLOAD)
    store = tmp_path / "_optuna"
    proc = run_hpo(
        tmp_path,
        "study=simulated",
        f"study.workload={workload}",
        f"storage.dir={store}",
        "study.time_scale=0.02",
        "study.n_trials=4",
        "par=3",
        "sampler=random",
        "pruner=none",
        "memory.min_uplift=0.6",
        "memory.overcommit=false",
        f"memory.settle={str(settle).lower()}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = optuna.load_study(study_name="simulated", storage=f"sqlite:///{store}/simulated.db")
    return sorted(study.trials, key=lambda t: t.number)


def _dispatched(trial: Any) -> datetime.datetime:
    return trial.datetime_start + datetime.timedelta(seconds=trial.user_attrs[Attr.ADMIT_WAIT_S])


def test_settled_trials_let_a_waiting_one_start_beside_them(tmp_path: Path) -> None:
    """Trials 1 and 2 reserve their upper estimates and trial 3 does not fit beside them;
    once they settled (two reports without growth) it does, long before either ends."""
    trials = _run(tmp_path / "on", settle=True)
    assert all(t.state.name == "COMPLETE" for t in trials)
    first, a, b, third = trials
    assert first.user_attrs[Attr.VRAM_RESERVED_MIB] == first.user_attrs[Attr.VRAM_BUDGET_MIB]
    for t in (a, b):
        attrs = t.user_attrs
        assert attrs[Attr.VRAM_SETTLED_MIB] < 0.75 * attrs[Attr.VRAM_RESERVED_MIB]
        assert attrs[Attr.PEAK_VRAM_MIB] <= attrs[Attr.VRAM_SETTLED_MIB]
    assert _dispatched(third) < min(a.datetime_complete, b.datetime_complete)
    # the first reserved the card (nothing measured); once it settled, the next one was
    # estimated from it and started beside it
    assert a.user_attrs[Attr.EST_SOURCE] == "settled"
    assert _dispatched(a) < first.datetime_complete

    trials = _run(tmp_path / "off", settle=False)  # the control: it waits for one to end
    first, a, b, third = trials
    assert Attr.VRAM_SETTLED_MIB not in a.user_attrs
    assert _dispatched(a) > first.datetime_complete - datetime.timedelta(seconds=0.5)
    ended = min(a.datetime_complete, b.datetime_complete)
    assert _dispatched(third) > ended - datetime.timedelta(seconds=0.5)

"""Declared memory spikes: measured apart from the steady footprint, serialized across
processes on one card, learned by the gate, and packed with one spike slot per device."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

import hpo
from hpo.contract import Attr, Decision
from hpo.devices import GIB, MIB, SimulatedGpu
from hpo.devices.simulated import SimulatedGpuSpec
from hpo.execution.context import TrialContext, trial_context
from hpo.execution.spike import SpikeLog
from hpo.memory import Estimate, MemoryGate
from hpo.scheduling.admission import AdmissionScheduler, Slot
from tests.conftest import ROOT, query, run_hpo

from .test_memory_gate import _trials


def _context(card: SimulatedGpu) -> TrialContext:
    return TrialContext(device=card.label, trial_number=0, handle=card, spikes=SpikeLog())


def test_outside_a_trial_a_spike_only_runs_its_block() -> None:
    ran = []
    with hpo.memory_spike(GIB):
        ran.append(1)
    assert ran == [1]
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        with hpo.memory_spike(-1):
            pass


def test_a_spike_is_measured_apart_from_the_steady_footprint(tmp_path: Path) -> None:
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), tmp_path)
    ctx = _context(card)
    card.reset_peaks()
    with trial_context(ctx):
        card.allocate(2 * GIB)
        for _ in range(2):
            with hpo.memory_spike(3 * GIB):
                card.allocate(3 * GIB)
                card.release(3 * GIB)
        card.allocate(1 * GIB)  # steady memory grows after the spikes
    assert ctx.spikes is not None
    attrs = ctx.spikes.attrs(card.peak_attrs(None))
    assert attrs[Attr.STEADY_VRAM_MIB] == 3.5 * 1024  # 3 GiB and the context
    assert attrs[Attr.SPIKE_VRAM_MIB] == 3 * 1024
    assert attrs[Attr.PEAK_VRAM_MIB] == 5.5 * 1024  # 2 GiB + context + the spike
    assert attrs[Attr.SPIKE_WAIT_S] >= 0


def _spiker(state: str, out: str, n: int) -> None:
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), state)
    with trial_context(_context(card)):
        card.allocate(GIB)
        for _ in range(n):
            with hpo.memory_spike(4 * GIB):
                card.allocate(4 * GIB)
                entered = time.time()
                time.sleep(0.03)
                left = time.time()
                card.release(4 * GIB)
            with open(out, "a") as f:
                f.write(json.dumps([entered, left]) + "\n")
            time.sleep(0.005)


def test_spikes_of_two_processes_on_one_card_never_overlap(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"p{i}.jsonl" for i in range(2)]
    procs = [ctx.Process(target=_spiker, args=(str(tmp_path), str(o), 8)) for o in outs]
    for p in procs:
        p.start()
    card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), tmp_path, readonly=True)
    most = 0
    while any(p.is_alive() for p in procs):
        most = max(most, card.snapshot().used_bytes or 0)
        time.sleep(0.002)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    spans = [[json.loads(line) for line in o.read_text().splitlines()] for o in outs]
    assert [len(s) for s in spans] == [8, 8]
    for a0, a1 in spans[0]:
        for b0, b1 in spans[1]:
            assert a1 <= b0 or b1 <= a0, "two spikes overlapped"
    assert most <= 2 * int(1.5 * GIB) + 4 * GIB  # two steady footprints and one spike


def test_the_gate_learns_spikes_and_admission_keeps_one_slot_per_card(tmp_path: Path) -> None:
    card = SimulatedGpu(0, SimulatedGpuSpec(20.0, 0.0), tmp_path)
    gate = MemoryGate([card], ["batch_size"], ["model"], 0.0)
    for bs, peak, spike in ((8, 8, 4), (16, 10, 4), (8, 8, 4), (16, 10, 4)):
        attrs = {"end_reason": "complete", "peak_vram_mib": peak * 1024}
        gate.observe({"model": "m", "batch_size": bs}, {**attrs, Attr.SPIKE_VRAM_MIB: spike * 1024})
    verdict = gate.check({"model": "m", "batch_size": 16})
    assert verdict.decision is Decision.ADMIT and verdict.estimate is not None
    est = verdict.estimate
    assert 4 * GIB <= est.spike_bytes < est.upper_bytes and 0 < est.spike_floor_bytes <= 4 * GIB
    # Two trials of 12 GiB with a 5 GiB spike each fit 20 GiB (7 + 7 + one slot of 5); whole
    # peaks would not (12 + 12).
    sched = AdmissionScheduler([card], 0.0, 0)
    spiky = Estimate(12 * GIB, 12 * GIB, "fit", 4, spike_bytes=5 * GIB, spike_floor_bytes=5 * GIB)
    flat = Estimate(12 * GIB, 12 * GIB, "fit", 4)
    for estimate, second in ((spiky, Decision.ADMIT), (flat, Decision.WAIT)):
        sched.books.running.clear()
        slots = [Slot(0, True, None), Slot(1, True, None)]
        first = sched.place(estimate, slots)
        assert first.decision is Decision.ADMIT
        sched.books.hold(0, first)
        slots = [Slot(0, False, 0), Slot(1, True, None)]
        assert sched.place(estimate, slots).decision is second
    assert sched.books.spike_slot(0) == 0  # a trial without a declared spike holds none
    sched.books.running.clear()
    first = sched.place(spiky, [Slot(0, True, None)])
    assert (first.reserve_bytes, first.spike_bytes) == (7 * GIB, 5 * GIB)
    assert first.cap_bytes == 12 * GIB  # what the trial may hold at its spike


SPIKY = """
name: spiky
device: {capacity_gib: 24, context_gib: 0.5}
family_param: model
epochs: 3
memory: {scaling: [batch_size]}
space:
  model: {type: categorical, choices: [m]}
  batch_size: {type: categorical, choices: [16, 32]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
families:
  m:
    peak_gib: [{coef: 4.0}, {coef: 0.1, powers: {batch_size: 1}}]
    eval_extra_gib: [{coef: 6.0}]
    eval_s: 0.4
    eval_spike: true
    epoch_s: 1.0
    demand: {base: 0.2}
    curve: {ceiling: 0.9}
"""


def test_a_simulated_study_declares_its_evaluations_as_spikes(tmp_path: Path) -> None:
    workload = tmp_path / "spiky.yaml"
    workload.write_text(SPIKY)
    store = tmp_path / "_optuna"
    proc = run_hpo(
        tmp_path,
        "study=simulated",
        f"study.workload={workload}",
        f"storage.dir={store}",
        "study.time_scale=0.02",
        "study.n_trials=12",
        "study.epochs=3",
        "study.memory.accumulation=false",
        "par=4",
        "sampler=random",
        "pruner=none",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = _trials(store / "simulated.db")
    assert [t["end_reason"] for t in trials] == ["complete"] * 12
    for t in trials:
        assert t["spike_vram_mib"] == pytest.approx(6 * 1024, abs=1)
        assert t["peak_vram_mib"] == pytest.approx(t["steady_vram_mib"] + 6 * 1024, abs=1)
    # Whole peaks of 12.1-13.7 GiB cannot share the 22.8 GiB budget; once spikes are learned
    # a reservation holds the steady part and the card one shared slot: two run side by side.
    rows = query(store / "simulated.db", "select datetime_start, datetime_complete from trials")
    spans = [
        (dt.datetime.fromisoformat(a) + dt.timedelta(seconds=t["admit_wait_s"]),
         dt.datetime.fromisoformat(b))
        for (a, b), t in zip(rows, trials, strict=True)
    ]  # fmt: skip
    side_by_side = [
        (x, y) for x, y in itertools.combinations(spans, 2) if x[0] < y[1] and y[0] < x[1]
    ]
    assert side_by_side
    assert all(t["spike_wait_s"] >= 0 for t in trials)  # (waits depend on timing)


def test_a_workload_flag_must_be_a_boolean(tmp_path: Path) -> None:
    from hpo.errors import ConfigError
    from hpo.sim import load_workload

    bad = tmp_path / "bad.yaml"
    bad.write_text(SPIKY.replace("eval_spike: true", "eval_spike: maybe"))
    with pytest.raises(ConfigError, match="families.m.eval_spike must be true or false"):
        load_workload(str(bad))
    assert ROOT.is_dir() and MIB == 1024 * 1024

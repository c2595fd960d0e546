"""The admission replay behind ``hpo plan`` and ``bench.packing_bound``: known trials as events."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from hpo.scheduling.replay import Cards, Job, Policy, replay

GIB = 1024**3
CARD = Cards(capacity_bytes=10 * GIB, count=1, context_bytes=0, margin_frac=0.05)


def job(peak_gib: float, work_s: float = 10.0, setup_s: float = 1.0, demand: float = 0.0) -> Job:
    peak = peak_gib * GIB
    return Job({"size": peak_gib}, peak, peak, setup_s, work_s, demand)


def test_memory_aware_runs_big_trials_one_after_another_without_oom() -> None:
    """Two trials of 6 of 10 GiB cannot share the card: one at a time, 11 s each."""
    out = replay([job(6)], 4, Policy(2, aware=True), CARD)
    assert (out.finished, out.ooms, out.pre_pruned) == (4, 0, 0)
    assert out.wall_s == pytest.approx(44.0)


def test_a_trial_that_settles_lets_the_next_start_beside_it() -> None:
    """Reserving 6 of 10 GiB (budget 9.5) for a 3 GiB peak, two trials cannot start together;
    settled after 2 of their 10 work seconds at 3 GiB, the next starts beside: it starts at
    t = 3 (1 s start-up + 2 s), not at t = 11."""
    wide = Job({"size": 3}, 3 * GIB, 6 * GIB, 1.0, 10.0, settle_after=0.2, settled_bytes=3 * GIB)
    out = replay([wide], 2, Policy(2, aware=True), CARD)
    assert (out.finished, out.ooms) == (2, 0)
    assert out.wall_s == pytest.approx(14.0)
    kept = replay([replace(wide, settle_after=None)], 2, Policy(2, aware=True), CARD)
    assert kept.wall_s == pytest.approx(22.0)
    blind = replay([wide], 2, Policy(2, aware=False), CARD)  # memory-blind: nothing to settle
    assert blind.wall_s == pytest.approx(11.0)


def test_memory_blind_par_loses_the_trial_that_allocates_into_a_full_card() -> None:
    """Blind par 2: the second trial's first allocation (after its 1 s start-up) finds 6 GiB
    held and runs out of memory; each retry loses its start-up while the first trial holds the
    card (t = 1 … 10); the one that starts at t = 10 runs once the first ends. No third trial
    starts: two finished or running claim the target."""
    out = replay([job(6)], 2, Policy(2, aware=False), CARD)
    assert out.finished == 2
    assert out.ooms == 10
    assert out.wall_s == pytest.approx(21.0)


def test_trials_that_share_the_card_halve_the_wall_time() -> None:
    par1 = replay([job(3)], 8, Policy(1, aware=False), CARD)
    par2 = replay([job(3)], 8, Policy(2, aware=False), CARD)
    auto = replay([job(3)], 8, Policy(8, aware=True), CARD)
    assert par1.wall_s == pytest.approx(88.0)
    assert par2.wall_s == pytest.approx(44.0) and par2.ooms == 0
    assert auto.wall_s == pytest.approx(33.0)  # three of 3 GiB fit the 9.5 GiB budget


def test_compute_contention_slows_trials_at_work_together() -> None:
    """Two trials that each use the whole card's compute take as long side by side as one
    after the other; at demand 0.5 they share it for free."""
    full = replay([job(2, setup_s=0, demand=1.0)], 2, Policy(2, aware=True), CARD)
    half = replay([job(2, setup_s=0, demand=0.5)], 2, Policy(2, aware=True), CARD)
    assert full.wall_s == pytest.approx(20.0)
    assert half.wall_s == pytest.approx(10.0)


def test_the_gap_between_trials_idles_the_worker() -> None:
    out = replay([job(1, setup_s=0)], 3, Policy(1, aware=False), CARD, gap_s=2.0)
    assert out.wall_s == pytest.approx(34.0)  # 10 + 2 + 10 + 2 + 10


def test_what_cannot_fit_alone_is_pre_pruned_or_lost_once() -> None:
    """Memory-aware admission never runs it; blind PAR loses it once (its gate learns from
    that OOM), or never where the gate knows its memory from the start."""
    jobs = [job(12), job(2, setup_s=0)]
    aware = replay(jobs, 3, Policy(2, aware=True), CARD)
    assert (aware.finished, aware.ooms, aware.pre_pruned) == (3, 0, 1)
    blind = replay(jobs, 3, Policy(1, aware=False), CARD)
    assert (blind.finished, blind.ooms) == (3, 1)
    assert blind.wall_s == pytest.approx(31.0)  # the OOM cost its 1 s start-up
    known = [replace(j, gate_knows=True) for j in jobs]
    told = replay(known, 3, Policy(1, aware=False), CARD)
    assert (told.finished, told.ooms, told.pre_pruned) == (3, 0, 1)
    assert told.wall_s == pytest.approx(30.0)


def test_an_underestimated_trial_hits_its_cap_then_runs_with_its_peak_reserved() -> None:
    low = Job({"size": 4}, 4 * GIB, 2 * GIB, 1.0, 10.0)
    out = replay([low], 2, Policy(1, aware=True), CARD)
    assert (out.finished, out.ooms) == (2, 1)


def test_nothing_that_fits_is_infinite_time() -> None:
    out = replay([job(12)], 5, Policy(2, aware=True), CARD)
    assert out.finished == 0 and math.isinf(out.wall_s) and out.pre_pruned == 1


def test_several_cards_run_in_parallel() -> None:
    two = Cards(10 * GIB, 2, 0, 0.05)
    out = replay([job(6)], 4, Policy(2, aware=True), two)
    assert out.wall_s == pytest.approx(22.0) and out.ooms == 0


@pytest.mark.parametrize("text", ["par0", "par", "auto2", "PAR2", "2"])
def test_a_bad_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="parN"):
        Policy.parse(text)


def test_policies_parse() -> None:
    assert Policy.parse("par3") == Policy(3, aware=False)
    assert Policy.parse(" auto ", cap=6) == Policy(6, aware=True)
    assert Policy.parse("auto").name == "auto" and Policy.parse("par2").name == "par2"


def test_a_trial_out_of_memory_is_retried_next_with_more_micro_batches() -> None:
    """Blind par 2: the second trial's whole batch (6 GiB) meets the first's 6 GiB and runs
    out of memory at t = 1; its retry (3 GiB as micro-batches, longer) is asked next by the
    same worker and fits beside it: t = 1 + 1 s start-up + 12 s."""
    split = Job({"size": 3}, 3 * GIB, 3 * GIB, 1.0, 12.0)
    whole = replace(job(6), retry=split)
    out = replay([job(6), whole], 2, Policy(2, aware=False), CARD)
    assert (out.finished, out.ooms) == (2, 1)
    assert out.wall_s == pytest.approx(14.0)
    without = replay([job(6), job(6)], 2, Policy(2, aware=False), CARD)
    assert without.ooms > 1  # drawn again later, into the same full card


def test_what_cannot_fit_alone_runs_as_micro_batches() -> None:
    """12 GiB cannot fit a 10 GiB card, its retry at 6 GiB can: memory-aware admission runs
    the retry from the start; blind PAR loses the whole batch once, then runs every later
    draw of it split (from the start where the gate knows); one under-estimated (reserving 8
    GiB) runs out of memory at its cap once and its retry is asked next."""
    big = replace(job(12), retry=job(6))
    aware = replay([big], 3, Policy(2, aware=True), CARD)
    assert (aware.finished, aware.ooms, aware.pre_pruned) == (3, 0, 0)
    assert aware.wall_s == pytest.approx(33.0)  # two of 6 GiB cannot share the card
    blind = replay([big], 3, Policy(1, aware=False), CARD)
    assert (blind.finished, blind.ooms) == (3, 1)
    assert blind.wall_s == pytest.approx(34.0)  # its first start-up lost, then 3 × 11 s
    told = replay([replace(big, gate_knows=True)], 3, Policy(1, aware=False), CARD)
    assert (told.finished, told.ooms, told.pre_pruned) == (3, 0, 0)
    assert told.wall_s == pytest.approx(33.0)
    low = replace(big, reserve_bytes=8 * GIB)
    under = replay([low], 1, Policy(1, aware=True), CARD)
    assert (under.finished, under.ooms) == (1, 1)
    assert under.wall_s == pytest.approx(12.0)  # its 1 s start-up lost, then 11 s


def test_a_blind_replay_of_trials_without_start_up_that_overflow_the_card_ends() -> None:
    """Three blind trials of 10 GiB on a 24 GiB card: the third runs out of memory at once
    (no start-up). Time passes before the next start, so the replay ends (it started, failed
    and drew again at the same instant forever)."""
    jobs = [Job({"model": "a"}, 10 * GIB, 10 * GIB, 0.0, 5.0, 0.5) for _ in range(4)]
    outcome = replay(jobs, 8, Policy(3, aware=False), Cards(24 * GIB, 1, 0), 0.0)
    assert outcome.finished == 8 and outcome.ooms > 0
    assert outcome.wall_s < 8 * 5.0  # two at a time, not one

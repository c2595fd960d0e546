"""Safe overcommit (issue 33): quantile reservations under caps that add up to at most the
budget, cap hits that end ``cap_exceeded`` and are re-queued at once, capped probes of new
families, and the replay of it all."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.contract import Attr, Decision, EndReason
from hpo.devices import GIB, MIB
from hpo.memory import Estimate, EstimateSource
from hpo.scheduling import AdmissionScheduler, DurationModel, Slot
from hpo.scheduling.overcommit import expected_cost, reservation, shaded, with_need
from hpo.scheduling.replay import Cards, Job, Policy, _Card, replay
from hpo.supervisor.retry import requeue_after_cap
from tests.conftest import settings_of

ROOT = Path(__file__).resolve().parents[1]
CTX = int(0.5 * GIB)


def _estimate(point_gib: float, upper_gib: float) -> Estimate:
    return Estimate(point_gib * GIB, upper_gib * GIB, EstimateSource.FIT, 5)


@pytest.mark.parametrize("cost_frac", [0.0, 0.02, 0.1, 0.3, 1.0])
def test_the_reservation_lies_between_the_point_and_the_upper_and_costs_least(
    cost_frac: float,
) -> None:
    point, upper = 8 * GIB, 10 * GIB
    r = reservation(point, upper, cost_frac)
    assert point <= r <= upper
    cheapest = min(
        expected_cost(point + (upper - point) * i / 200, point, upper, cost_frac)
        for i in range(201)
    )
    assert expected_cost(r, point, upper, cost_frac) <= cheapest * 1.001
    assert expected_cost(r, point, upper, cost_frac) <= expected_cost(
        upper, point, upper, cost_frac
    )


def test_a_dearer_cap_hit_reserves_more_and_no_spread_reserves_the_upper() -> None:
    cheap, dear = reservation(8 * GIB, 10 * GIB, 0.02), reservation(8 * GIB, 10 * GIB, 0.5)
    assert cheap < dear < 10 * GIB
    assert reservation(9 * GIB, 9 * GIB, 0.1) == 9 * GIB
    known = _estimate(9, 9)
    assert shaded(known, 0.1) == known


def test_a_requeued_cap_hit_needs_what_it_measured() -> None:
    again = with_need(_estimate(8, 10), 12 * GIB)
    assert again.point_bytes == 12 * GIB and again.upper_bytes == pytest.approx(15 * GIB)
    assert reservation(again.point_bytes, again.upper_bytes, 0.1) >= 12 * GIB
    nothing_known = with_need(None, 12 * GIB)
    assert nothing_known.point_bytes == 12 * GIB and nothing_known.upper_bytes > 12 * GIB


def _fill(sched: AdmissionScheduler, estimate: Estimate, n_workers: int) -> list[int]:
    """Admit trials of ``estimate`` until one waits; their caps."""
    caps = []
    for number in range(n_workers):
        slots = [Slot(w, w >= number, 0 if w < number else None) for w in range(n_workers)]
        placement = sched.place(sched.shade(estimate, 0.1), slots)
        if placement.decision is not Decision.ADMIT:
            break
        assert placement.cap_bytes is not None
        caps.append(placement.cap_bytes)
        sched.books.hold(number, placement)
    return caps


@pytest.mark.parametrize("overcommit", [True, False])
def test_the_caps_on_a_card_add_up_to_at_most_its_budget(overcommit: bool) -> None:
    card = _Card(24 * GIB, 0)
    sched = AdmissionScheduler([card], 0.05, CTX, overcommit=overcommit)
    caps = _fill(sched, _estimate(4.0, 5.0), 8)
    budget = sched.books.budget(0)
    if overcommit:  # more trials side by side, and their caps never exceed the budget
        assert len(caps) == 5 and sum(caps) <= budget
        assert all(cap < 5 * GIB for cap in caps)  # a quantile below the upper estimate
    else:  # the upper estimate plus the margin each: the caps overcommit the card
        assert len(caps) == 4 and sum(caps) > budget


def test_a_new_familys_first_trial_is_a_capped_probe_beside_what_runs() -> None:
    for overcommit in (True, False):
        sched = AdmissionScheduler([_Card(24 * GIB, 0)], 0.05, CTX, overcommit=overcommit)
        assert len(_fill(sched, _estimate(4.0, 5.0), 1)) == 1  # one trial runs
        slots = [Slot(0, False, 0), Slot(1, True, None)]
        placement = sched.place(None, slots)  # nothing known of its family
        if not overcommit:
            assert placement.decision is Decision.WAIT and "alone" in placement.reason
            continue
        assert placement.decision is Decision.ADMIT and "probe" in placement.reason
        held = sched.books.reserved(0) + 2 * CTX
        assert placement.cap_bytes == sched.books.budget(0) - held + CTX  # the free memory


def test_durations_learn_what_a_cap_hit_loses() -> None:
    model = DurationModel(["model"])
    assert model.cap_hit_frac({"model": "a"}) is None
    model.observe({"model": "a"}, {Attr.END_REASON: "complete", Attr.DURATION_S: 40.0})
    model.observe({"model": "b"}, {Attr.END_REASON: "cap_exceeded", Attr.DURATION_S: 2.0})
    assert model.cap_hit_frac({"model": "a"}) == pytest.approx(0.05)  # every group's
    model.observe({"model": "a"}, {Attr.END_REASON: "cap_exceeded", Attr.DURATION_S: 8.0})
    assert model.cap_hit_frac({"model": "a"}) == pytest.approx(0.2)  # its own group's


def test_a_cap_hit_of_a_trial_with_no_start_up_still_costs_its_attempt_overhead() -> None:
    """Every attempt holds its reservation from admission to its end reaching the supervisor,
    beyond what its worker measures; a cap hit at its first step is not free."""
    model = DurationModel(["model"])
    done = {Attr.END_REASON: "complete", Attr.DURATION_S: 10.0}
    hit = {Attr.END_REASON: "cap_exceeded", Attr.DURATION_S: 0.0}
    model.observe({"model": "a"}, done)
    model.observe({"model": "a"}, hit)
    assert model.cap_hit_frac({"model": "a"}) == 0.0  # no overhead seen yet
    model.held(12.0, done)  # 2 s beyond its 10 s
    model.held(2.0, hit)  # 2 s beyond its 0 s
    assert model.overhead_s() == pytest.approx(2.0)
    assert model.cap_hit_frac({"model": "a"}) == pytest.approx(2.0 / 12.0)
    model.held(0.5, {Attr.END_REASON: "complete"})  # no measured duration: says nothing
    assert model.overhead_s() == pytest.approx(2.0)


def _noisy_jobs(n: int) -> list[Job]:
    """Trials whose estimate spans ±10 % and whose runs land anywhere in it."""
    jobs = []
    for i in range(n):
        point = (4 + (i % 5)) * GIB
        peak = point * (0.9 + 0.2 * ((i * 7) % 11) / 10)
        jobs.append(
            Job({"model": str(i % 5)}, peak, point * 1.1, 1.0, 30.0, 0.3, point_bytes=point)
        )
    return jobs


def test_the_replay_of_overcommit_has_cap_hits_not_ooms_and_packs_more() -> None:
    jobs, cards = _noisy_jobs(40), Cards(24 * GIB, 1, CTX)
    upper = replay(jobs, 60, Policy(8, aware=True), cards, 0.0, ["model"])
    oc = replay(jobs, 60, Policy(8, aware=True, overcommit=True), cards, 0.0, ["model"])
    assert upper.ooms == 0 and upper.cap_hits == 0
    assert oc.ooms == 0 and oc.cap_hits > 0 and oc.finished == 60
    assert oc.wall_s < upper.wall_s
    # each cap hit is asked again at once, needing its peak: it never hits its cap twice
    hit = [e.number for e in oc.events if e.lost_s is not None]
    assert len(hit) == oc.cap_hits and all(e.lost_s >= 1.0 for e in oc.events if e.lost_s)


def test_a_cap_hit_is_requeued_with_its_need_its_split_and_checkpoint() -> None:
    settings = settings_of("study=simulated")  # it accumulates gradients
    study = optuna.create_study()
    attrs = {Attr.ACCUM_STEPS: 2, Attr.CHECKPOINT_DIR: "/ckpt/3"}
    run = {"batch_size": 16, "lr": 0.1}  # as it ran: half its batch of 32
    requeue_after_cap(study, 3, run, attrs, 12 * GIB, settings)
    (waiting,) = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == {"batch_size": 32, "lr": 0.1}
    assert waiting.user_attrs[Attr.RETRY_OF] == 3
    assert waiting.user_attrs[Attr.RETRY_KIND] == EndReason.CAP_EXCEEDED.value
    assert waiting.user_attrs[Attr.CAP_NEED_MIB] == 12 * 1024
    assert waiting.user_attrs[Attr.ACCUM_STEPS] == 2
    assert waiting.user_attrs[Attr.CHECKPOINT_DIR] == "/ckpt/3"
    assert EndReason.CAP_EXCEEDED.state is optuna.trial.TrialState.FAIL


def test_only_the_trial_over_its_cap_fails_cap_exceeded_and_its_requeue_completes(
    tmp_path: Path,
) -> None:
    """The real supervisor on a simulated card (the gpu-check part's dry run): two trials
    under caps adding up to two thirds of the card; the one that allocates more than it was
    told ends cap_exceeded (not oom), its neighbour completes, its re-queue completes."""
    from bench._gpu_cap import run_cap_overrun

    result = run_cap_overrun(tmp_path, True, str(ROOT))
    assert result["passed"], result["problems"]
    assert [reason for _, reason in result["ends"]] == ["complete", "cap_exceeded", "complete"]
    assert result["cap_need_mib"] >= result["over_mib"] * 0.99
    assert result["cap_need_mib"] * MIB > result["fits_mib"] * MIB  # more than it was told


def test_the_replay_of_cap_hits_without_start_up_finishes() -> None:
    """A cap hit at its first allocation with no start-up, nothing else running: it is asked
    again at once (the replay gave up with an infinite wall time)."""
    jobs = [
        Job(
            {"model": str(i % 3)},
            (5.4 + i % 3) * GIB,
            6.6 * GIB,
            0.0,
            10.0,
            0.5,
            point_bytes=5 * GIB,
        )
        for i in range(12)
    ]
    oc = replay(jobs, 12, Policy(2, aware=True, overcommit=True), Cards(8 * GIB, 1, CTX), 0.0)
    assert oc.finished == 12 and oc.cap_hits > 0 and oc.ooms == 0
    assert oc.wall_s < float("inf")

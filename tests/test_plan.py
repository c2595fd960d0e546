"""``hpo plan``: what-if replays of a study's own history or of a workload file; the ETA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpo.look import plan
from hpo.look.db import StudyDB, StudyRef
from hpo.look.status import Snapshot
from hpo.look.status_view import render
from hpo.scheduling.replay import Policy
from tests.look import make_toy_study, run_look

GIB = 1024**3


def test_plan_of_a_workload_file_prints_every_policy(tmp_path: Path) -> None:
    result = run_look(
        tmp_path, "plan", "--workload", "criteria24", "--jobs", "60", "--cards", "1,2", "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["cards"], r["policy"]) for r in rows] == [
        (c, p) for c in (1, 2) for p in ("par1", "par2", "par3", "par4", "auto", "auto-oc")
    ]
    by = {(r["cards"], r["policy"]): r for r in rows}
    assert by[(1, "auto")]["ooms"] == 0 and by[(1, "auto")]["cap_hits"] == 0
    # safe overcommit: no OOM (an overrun would be a cap hit), and it packs at least as many
    # trials an hour as reserving every upper estimate
    assert by[(1, "auto-oc")]["ooms"] == 0
    assert by[(1, "auto-oc")]["trials_per_hour"] >= by[(1, "auto")]["trials_per_hour"]
    assert by[(1, "par4")]["ooms"] > by[(1, "par1")]["ooms"]  # blind PAR over-commits
    # what a lone trial cannot hold whole (large@64) runs as micro-batches (hpo's gate splits
    # it whatever the admission): nothing pre-pruned, and one trial at a time never OOMs
    assert by[(1, "auto")]["pre_pruned"] == 0 and by[(1, "par1")]["pre_pruned"] == 0
    assert by[(1, "par1")]["ooms"] == 0
    # a second card runs more side by side (not twice as many: the big ones still run alone)
    assert by[(2, "auto")]["trials_per_hour"] > 1.3 * by[(1, "auto")]["trials_per_hour"]
    assert all(r["hours_to_target"] > 0 for r in rows)
    assert not list(tmp_path.iterdir())  # nothing written


def test_plan_of_a_cpu_study_needs_a_card_size_then_replays_its_history(tmp_path: Path) -> None:
    db = make_toy_study(tmp_path)
    args = ["study=toy", f"storage.dir={db.parent}"]
    refused = run_look(tmp_path, "plan", *args)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "hpo: error: plan: the study ran without device memory; say --card-gib"
    )
    default = run_look(tmp_path, "plan", *args, "--card-gib", "8", "--policies", "par1")
    assert "hours to 16" in default.stdout  # the target of the run that made the study
    plan_args = ["--card-gib", "8", "--policies", "par1,par2", "--trials", "40"]
    result = run_look(tmp_path, "plan", *args, *plan_args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("study toy (")
    assert lines[1].startswith("as it ran: ") and "trials/h" in lines[1]
    assert "hours to 40" in lines[2] and "hours left" in lines[2]
    assert [line.split()[2] for line in lines[3:]] == ["par1", "par2"]
    rate = {line.split()[2]: float(line.split()[3]) for line in lines[3:]}
    assert rate["par2"] > 1.5 * rate["par1"]  # no memory held: two workers run twice as many


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "par0"], "plan: a policy is parN (N >= 1), auto or auto-oc, got 'par0'"),
        (["--cards", "0"], "plan: --cards must be >= 1 and --card-gib > 0"),
        (["--card-gib", "big"], "plan: could not convert string to float: 'big'"),
        (["--jobs", "0"], "plan: --jobs and --trials must be >= 1"),
        (["--workload", "no-such.yaml"], "workload file 'no-such.yaml' cannot be read"),
    ],
)
def test_plan_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_look(tmp_path, "plan", "--workload", "criteria24", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not list(tmp_path.iterdir())


def test_plan_of_a_missing_study_is_exit_2(tmp_path: Path) -> None:
    result = run_look(tmp_path, "plan", "study=toy", f"storage.dir={tmp_path / 'none'}")
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "none").exists()


def test_plan_matches_the_measured_run_of_a_kept_benchmark_study(tmp_path: Path) -> None:
    """Replaying a kept packing study under the policy that ran gives its measured trials per
    hour within 15 %: blind PAR (its OOMs included) and memory-aware admission."""
    from bench import packing

    keep = tmp_path / "kept"
    argv = ["--trials", "30", "--time-scale", "0.01", "--policies", "par2,aware"]
    assert packing.main([*argv, "--keep", str(keep), "--json", str(tmp_path / "p.json")]) == 0
    for name, policy in (("par2", Policy(2, False)), ("aware", Policy(packing.AWARE_CAP, True))):
        ref = StudyRef(f"packing-{name}", f"sqlite:///{keep / name / f'packing-{name}.db'}")
        with StudyDB(ref) as db:
            trials = plan.from_study(db, 0.05, int(0.5 * GIB), groups=["model"])
        assert trials.measured is not None and trials.capacity_bytes is not None
        target = trials.measured.finished
        gib = trials.capacity_bytes / GIB
        assert gib == pytest.approx(24, rel=0.01)
        (row,) = plan.what_if(trials, target, [gib], [1], [policy], 0.05, ["model"])
        ratio = row.outcome.per_hour / trials.measured.per_hour
        assert 0.85 <= ratio <= 1.15, (name, row.outcome, trials.measured)


def test_a_history_replays_a_retry_only_where_its_trial_runs_out_of_memory(
    tmp_path: Path,
) -> None:
    """Trial 1 ran out of memory beside trial 0 and its retry (trial 2, two micro-batches of
    half the memory) ran: replayed under the PAR that ran, the retry is asked next, as it was;
    alone on the card (par1) trial 1 fits whole and its retry never runs. Where the history
    stops, the retries hpo would go on with are estimated."""
    import datetime as dt

    import optuna
    from optuna.distributions import CategoricalDistribution

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    dists = {
        "model": CategoricalDistribution(["a", "b"]),
        "batch_size": CategoricalDistribution([8, 16, 32]),
    }
    t0 = dt.datetime(2026, 1, 1)
    mib = {"vram_budget_mib": 9728.0, "device": "sim:0"}
    history = [  # (model, start s, end s, state, user attributes)
        ("a", 0, 11, "COMPLETE", {"end_reason": "complete", "peak_vram_mib": 6144.0}),
        ("b", 0, 1, "FAIL", {"end_reason": "oom", "peak_vram_mib": 0.0, "accum_steps": 1,
                             "error": "CUDA out of memory. Tried to allocate 6.00 GiB"}),
        ("b", 1, 14, "COMPLETE", {"end_reason": "complete", "peak_vram_mib": 3072.0,
                                  "retry_of": 1, "accum_steps": 2, "micro_batch": 16}),
    ]  # fmt: skip
    for number, (model, start, end, state, attrs) in enumerate(history):
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=number,
                state=optuna.trial.TrialState[state],
                value=1.0 if state == "COMPLETE" else None,
                datetime_start=t0 + dt.timedelta(seconds=start),
                datetime_complete=t0 + dt.timedelta(seconds=end),
                params={"model": model, "batch_size": 32},
                distributions=dists,
                user_attrs={**attrs, **mib},
                system_attrs={},
                intermediate_values={},
                trial_id=number,
            )
        )
    with StudyDB(StudyRef("s", url)) as db:
        trials = plan.from_study(db, 0.05, 0, setup_s=1.0, groups=["model"])
    assert [j.params["model"] for j in trials.jobs] == ["a", "b"]  # the retry hangs off trial 1
    retry = trials.jobs[1].retry
    assert retry is not None and retry.peak_bytes == 3072 * 1024**2
    assert trials.jobs[1].peak_bytes == 6 * GIB  # what its failed allocation asked at least
    rows = plan.what_if(trials, 2, [10], [1], [Policy(2, False), Policy(1, False)], 0.05)
    by = {r.policy: r.outcome for r in rows}
    assert (by["par2"].finished, by["par2"].ooms) == (2, 1)
    assert (by["par1"].finished, by["par1"].ooms) == (2, 0)
    # an objective that accumulates gradients (up to 4 micro-batches): where the history
    # stops, the retries hpo would ask next are sized from the trials that ran
    with StudyDB(StudyRef("s", url)) as db:
        split = plan.from_study(db, 0.05, 0, 1.0, ["model"], ["batch_size"], "batch_size", 4)
    whole = split.jobs[0].retry  # trial 0 never ran out of memory: its retries are estimated
    assert whole is not None and whole.retry is not None and whole.retry.retry is None
    assert whole.peak_bytes <= split.jobs[0].peak_bytes  # memory is monotone in the batch
    recorded = split.jobs[1].retry  # trial 2 as it ran, then the one retry left (4 steps)
    assert recorded is not None and recorded.peak_bytes == 3072 * 1024**2
    assert recorded.retry is not None and recorded.retry.retry is None


def test_status_shows_the_eta_at_the_recent_rate() -> None:
    snap = Snapshot("s", "sqlite:///x.db", 100, {"COMPLETE": 30, "PRUNED": 10}, 60.0)
    assert snap.eta_s is None  # no rate: not running
    snap.per_hour = 30.0
    assert snap.eta_s == pytest.approx(2 * 3600)
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(render(snap))
    assert "40/100 finished toward the run's target; ETA 2:00:00 at 30.0 trials/h" in (
        console.export_text()
    )
    snap.counts = {"COMPLETE": 100}
    assert snap.eta_s is None  # reached

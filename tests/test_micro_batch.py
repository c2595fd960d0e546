"""Micro-batching as a memory lever: the fewest micro-batches that can run are chosen, a trial
is pre-pruned only when none can, an OOM retries with twice as many, and the trial records how
it ran."""

from __future__ import annotations

from pathlib import Path

from hpo.contract import Decision
from hpo.memory import MemoryGate
from hpo.memory.micro import choose, split
from tests.conftest import query, run_hpo, user_attrs

MIB, GIB = 2**20, 2**30


class Card:
    has_memory = True
    label = "test:0"
    capacity_bytes = 24 * GIB


def _gate() -> MemoryGate:
    gate = MemoryGate([Card()], ["batch_size"], ["model"], 0.05, context_bytes=512 * MIB)
    for bs, mib in ((4, 6_000), (8, 8_000), (16, 12_000)):  # 4,000 + 500·bs MiB
        for noise in (0.99, 1.01):
            gate.observe({"model": "l", "batch_size": bs}, {"end_reason": "complete",
                         "peak_vram_mib": mib * noise})  # fmt: skip
    return gate


LARGE_ONLY = """
device: {capacity_gib: 12, context_gib: 0.5}
epochs: 2
memory: {scaling: [batch_size]}
space:
  model: {type: categorical, choices: [large]}
  batch_size: {type: categorical, choices: [32]}
families:
  large:
    peak_gib: [{coef: 6.0}, {coef: 0.42, powers: {batch_size: 1}}]
    epoch_s: 1.0
    demand: {base: 0.5}
    curve: {ceiling: 0.9}
"""


def test_split_divides_evenly_or_not_at_all() -> None:
    assert split({"batch_size": 64, "lr": 0.1}, "batch_size", 4) == {"batch_size": 16, "lr": 0.1}
    assert split({"batch_size": 24}, "batch_size", 16) is None
    assert split({"batch_size": 2}, "batch_size", 4) is None


def test_the_fewest_micro_batches_that_can_run_are_chosen() -> None:
    gate = _gate()
    # bs 32: 20,000 MiB fits whole; bs 128: 68,000 cannot, 64 (36,000) cannot, 32 can: k=4
    c = choose(gate, {"model": "l", "batch_size": 32}, "batch_size", 8)
    k, run, verdict = c.steps, c.params, c.verdict
    assert (k, run["batch_size"], verdict.decision) == (1, 32, Decision.ADMIT)
    c = choose(gate, {"model": "l", "batch_size": 128}, "batch_size", 8)
    k, run, verdict = c.steps, c.params, c.verdict
    assert (k, run["batch_size"], verdict.decision) == (4, 32, Decision.ADMIT)
    assert verdict.estimate is not None and verdict.estimate.point_bytes < 22 * GIB
    # a retry asks for more: at least 8
    c = choose(gate, {"model": "l", "batch_size": 128}, "batch_size", 8, 8)
    k, run = c.steps, c.params
    assert (k, run["batch_size"]) == (8, 16)
    # without accumulation (max 0) the whole batch is pre-pruned
    c = choose(gate, {"model": "l", "batch_size": 128}, "batch_size", 0)
    k, run, verdict = c.steps, c.params, c.verdict
    assert (k, run["batch_size"], verdict.decision) == (1, 128, Decision.PRE_PRUNE)


def test_an_untrusted_estimate_over_the_budget_is_split_rather_than_run_alone() -> None:
    """One size measured (bs 4: 6,000 MiB): bs 64 may need up to ~96,000 MiB (point halfway,
    ~51,000), too loose to pre-prune, so whole it would run alone and most likely run out of
    memory; split into 4 micro-batches of 16 its point estimate (~15,000 MiB) is within what a
    lone trial may hold (24 GiB: the budget plus the margin), into 2 of 32 (~27,000) not."""
    gate = MemoryGate([Card()], ["batch_size"], ["model"], 0.05, context_bytes=512 * MIB)
    gate.observe({"model": "l", "batch_size": 4}, {"end_reason": "complete", "peak_vram_mib": 6000})
    whole = gate.check({"model": "l", "batch_size": 64})
    assert whole.decision is Decision.ADMIT and whole.estimate is not None
    assert whole.estimate.upper_bytes > 24 * GIB
    c = choose(gate, {"model": "l", "batch_size": 64}, "batch_size", 8)
    k, run, verdict = c.steps, c.params, c.verdict
    assert (k, run["batch_size"], verdict.decision) == (4, 16, Decision.ADMIT)
    assert verdict.estimate is not None and gate.alone_bytes is not None
    assert verdict.estimate.point_bytes <= gate.alone_bytes


def test_pre_pruned_only_when_no_micro_batch_fits() -> None:
    gate = _gate()
    # bs 512 would need 64 micro-batches of 8; at most 8 (of 64: 36,000 MiB) cannot run
    c = choose(gate, {"model": "l", "batch_size": 512}, "batch_size", 8)
    k, run, verdict = c.steps, c.params, c.verdict
    assert verdict.decision is Decision.PRE_PRUNE and k == 1 and run["batch_size"] == 512


def test_an_oom_retries_with_twice_the_micro_batches_and_trials_say_how_they_ran(
    tmp_path: Path,
) -> None:
    """large@32 (19.4 GiB) on a 12 GiB card: unknown, it runs whole and runs out of memory;
    its retry runs as 2 micro-batches of 16 (12.7 GiB: out of memory again), then 4 of 8
    (9.4 GiB), which completes. Nothing is pre-pruned: some micro-batch fits."""
    (tmp_path / "large.yaml").write_text(LARGE_ONLY)
    args = [
        "study=simulated",
        "study.workload=large.yaml",
        f"storage.dir={tmp_path / '_optuna'}",
        "study.time_scale=0.002",
        "par=1",
        "study.n_trials=1",
    ]
    proc = run_hpo(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "_optuna" / "simulated.db"
    trials = [user_attrs(db, n) for (n,) in query(db, "select number from trials order by 1")]
    ran = [(t["end_reason"], t["accum_steps"], t["micro_batch"]) for t in trials]
    assert ran == [("oom", 1, 32), ("oom", 2, 16), ("complete", 4, 8)]
    assert [t.get("retry_kind") for t in trials] == [None, "accumulation", "accumulation"]
    params = query(
        db, "select distinct param_value from trial_params where param_name = 'batch_size'"
    )
    assert len(params) == 1  # every attempt is the sampler's batch_size=32, split

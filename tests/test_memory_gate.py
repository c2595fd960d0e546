"""The memory gate inside real runs: simulated card, real workers, real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, query, run_hpo, user_attrs

WORKLOAD = ROOT / "bench" / "workloads" / "criteria24.yaml"


def _sim_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "study=simulated",
        f"storage.dir={tmp_path / '_optuna'}",
        "study.time_scale=0.002",
        "par=1",
        "sampler.seed=3",
        *extra,
    ]


def _trials(db: Path) -> list[dict]:
    numbers = [n for (n,) in query(db, "select number from trials order by number")]
    return [user_attrs(db, n) | {"number": n} for n in numbers]


def test_small_card_pre_prunes_what_cannot_fit_and_tells_the_sampler(tmp_path: Path) -> None:
    # On a 12 GiB card large@32, large@64 and base@64 cannot fit whole (and micro-batching is
    # off here); the gate learns it from measured peaks and OOMs, and then pre-prunes them
    # without running them.
    # TPE's random start-up phase is kept long: later, its proposals the gate would pre-prune
    # are drawn again (hpo/memory/sampling.py), so TPE itself rarely proposes them.
    proc = run_hpo(
        tmp_path,
        *_sim_args(
            tmp_path,
            "study.n_trials=40",
            "memory.capacity_gib=12",
            "sampler.n_startup_trials=30",
            "study.memory.accumulation=false",
        ),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = tmp_path / "_optuna" / "simulated.db"
    trials = _trials(db)
    reasons = [t["end_reason"] for t in trials]
    assert "memory_estimate" in reasons
    for t in trials:
        assert t["device"] == "sim:0" if t["end_reason"] != "memory_estimate" else True
        if t["end_reason"] == "memory_estimate":
            assert t["est_vram_upper_mib"] > t["vram_budget_mib"] == pytest.approx(12 * 1024 * 0.95)
            assert "peak_vram_mib" not in t  # it never ran
        elif t["end_reason"] in ("complete", "pruned"):
            assert t["peak_vram_mib"] > 512  # context + the trial's allocation
        elif t["end_reason"] == "oom":
            assert "Tried to allocate" in t["error"] and "peak_vram_mib" in t
    # Pre-pruned trials are infeasible to the sampler (trial.set_constraint("memory", ...)).
    rows = query(
        db,
        "select a.value_json from trial_system_attributes a join trial_user_attributes u "
        "on a.trial_id = u.trial_id where a.key = 'constraints:memory' "
        "and u.key = 'end_reason' and u.value_json = '\"memory_estimate\"'",
    )
    assert rows and len(rows) == reasons.count("memory_estimate")
    assert all(json.loads(v) > 0 for (v,) in rows)


def test_oom_retry_with_half_batch_is_opt_in(tmp_path: Path) -> None:
    args = _sim_args(tmp_path, "study.n_trials=12", "memory.capacity_gib=12", "memory.prune=false")
    args.append("study.memory.accumulation=false")  # else an OOM retries with micro-batches
    proc = run_hpo(tmp_path, *args, "memory.oom_retry_halved_batch=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    db = tmp_path / "_optuna" / "simulated.db"
    trials = {t["number"]: t for t in _trials(db)}
    ooms = [n for n, t in trials.items() if t["end_reason"] == "oom"]
    assert ooms, "a 12 GiB card must see OOMs without pre-pruning"
    retries = [t for t in trials.values() if t.get("retry_kind") == "halved_batch"]
    assert {t["retry_of"] for t in retries} <= set(ooms) and retries
    params = dict(
        query(db, "select t.number, p.param_value from trial_params p join trials t "
              "on p.trial_id = t.trial_id where p.param_name = 'batch_size'")
    )  # fmt: skip
    for t in retries:  # categorical index: one step down the choices [8, 16, 32, 64]
        assert params[t["number"]] == params[t["retry_of"]] - 1


def test_a_bad_workload_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: {capacity_gib: 24}\nfamilies: {}\nspace: {}\n")
    proc = run_hpo(tmp_path, *_sim_args(tmp_path, f"study.workload={bad}"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "families must name at least one family" in proc.stderr
    assert not (tmp_path / "_optuna").exists()


def test_memory_declarations_must_name_declared_params(tmp_path: Path) -> None:
    proc = run_hpo(tmp_path, *_sim_args(tmp_path, "study.memory.scaling=[seq_len]"))
    assert proc.returncode == 2
    assert "study.memory names param 'seq_len' that is not in study.space" in proc.stderr


def test_the_criteria_step_builder_traces_on_fake_tensors(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from hpo.config import compose
    from hpo.memory.prior import build_prior

    cfg = compose(
        ["study=criteria", "study.memory.step_builder=hpo.studies.criteria.memory:build_step"]
    )
    container = OmegaConf.to_container(cfg)
    assert isinstance(container, dict)
    prior = build_prior(container, ["batch_size"], ["model"], timeout_s=240)
    assert prior is not None
    for model in ("tiny", "small"):
        small, big = (prior.bytes_at({"model": model}, bs) for bs in (8, 64))
        assert small is not None and big is not None and 0 < small < big
        # at least parameters + gradients + two AdamW moments of fp32 weights
    tiny_8 = prior.bytes_at({"model": "tiny"}, 8)
    assert tiny_8 is not None and tiny_8 > 4 * 4 * 70_000  # tiny has ~70k+ parameters

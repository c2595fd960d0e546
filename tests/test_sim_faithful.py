"""The simulation charges what real trials pay: start-up before the first allocation (also
for a trial that then runs out of memory) and evaluation memory that arrives mid-trial."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import query, run_hpo, user_attrs

WORKLOAD = """
name: faithful
device: {capacity_gib: 24, context_gib: 0.5, count: 1}
family_param: model
epochs: 3
memory: {scaling: [batch_size]}
space:
  model: {type: categorical, choices: [m]}
  batch_size: {type: categorical, choices: [%(bs)s]}
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
families:
  m:
    peak_gib: [{coef: 1.0}, {coef: 0.5, powers: {batch_size: 1}}]
    eval_extra_gib: [{coef: %(extra)s}]
    epoch_s: 1.0
    setup_s: 2.0
    eval_s: %(eval_s)s
    demand: {base: 0.2}
    curve: {ceiling: 0.9}
"""


def _run(
    tmp_path: Path, bs: int, *extra: str, gib: float = 3.0, eval_s: float = 0.5
) -> tuple[Path, str]:
    (tmp_path / "w.yaml").write_text(WORKLOAD % {"bs": bs, "extra": gib, "eval_s": eval_s})
    args = [
        "study=simulated",
        "study.workload=w.yaml",
        "study.time_scale=0.1",  # setup 0.2 s, epochs 0.1 s
        f"storage.dir={tmp_path / '_optuna'}",
        "max_failures_in_a_row=100",
        *extra,
    ]
    proc = run_hpo(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    return tmp_path / "_optuna" / "simulated.db", proc.stderr


def _by_reason(db: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for (number,) in query(db, "select number from trials order by number"):
        attrs = user_attrs(db, number)
        out.setdefault(attrs.get("end_reason", "?"), []).append(attrs)
    return out


def test_a_trial_that_cannot_fit_spends_its_start_up_before_the_oom(tmp_path: Path) -> None:
    # 1 + 0.5·48 = 25 GiB on a 24 GiB card: every trial runs out of memory at its first
    # allocation, but only after the 0.2 s of start-up.
    db, _ = _run(tmp_path, 48, "study.n_trials=2", "par=1")
    ooms = _by_reason(db)["oom"]
    assert ooms and all(t["duration_s"] >= 0.2 for t in ooms), ooms
    assert all(t["peak_vram_mib"] < 25 * 1024 for t in ooms)


def test_evaluation_memory_makes_a_neighbour_run_out_mid_trial(tmp_path: Path) -> None:
    # Two blind trials train with 1 + 0.5·14 = 8 GiB each; one evaluating (8 + 7 GiB) leaves
    # room for the other's training (8 + 15 + 1 GiB of contexts = 24 GiB), so no trial fails
    # at its start; but two evaluations (90 % of each epoch) cannot overlap: the second runs
    # out of memory mid-trial, after its start-up and its training peak.
    blind = ("par=2", "memory.pack=false", "study.memory.accumulation=false")  # whole batches
    db, _ = _run(tmp_path, 14, "study.n_trials=4", *blind, gib=7, eval_s=0.9)
    ooms = _by_reason(db).get("oom", [])
    assert ooms, "no trial ran out of memory at its evaluation"
    for trial in ooms:
        assert trial["peak_vram_mib"] >= 8 * 1024  # it held its training peak first
        assert trial["duration_s"] >= 0.2  # and had spent its start-up


def test_admission_reserves_the_evaluation_too(tmp_path: Path) -> None:
    # Memory-aware: the measured peak includes the evaluation, so once it is known two such
    # trials never share the card and none runs out of memory after the first of its group.
    db, _ = _run(tmp_path, 20, "study.n_trials=5", "par=2")
    reasons = _by_reason(db)
    assert len(reasons.get("oom", [])) == 0, reasons.keys()
    assert len(reasons["complete"]) + len(reasons.get("pruned", [])) == 5
    measured = [t["peak_vram_mib"] for t in reasons["complete"]]
    assert min(measured) >= 14 * 1024 * 0.99  # 11 GiB training + 3 GiB evaluation

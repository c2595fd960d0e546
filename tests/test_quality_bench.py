"""bench.quality's metrics: regret against the truth, the late bloomer's loss, the anytime area,
and one tiny run of the real supervisor with two pruners."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from bench import quality
from bench.quality import Truth, aggregate, anytime_auc, run_metrics

T0 = datetime(2026, 1, 1)


def _trial(n: int, x: float, value: float | None, cost: float, pruned: bool = False) -> FrozenTrial:
    state = TrialState.PRUNED if pruned else TrialState.COMPLETE
    trial = create_trial(
        state=state,
        value=None if pruned else value,
        params={"x": x},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        user_attrs={"sim_gpu_s": cost, "end_reason": "pruned" if pruned else "complete"},
        intermediate_values={1: value or 0.0},
    )
    trial.datetime_complete = T0 + timedelta(seconds=n)
    return trial


TRUTH = Truth(optimum=1.0, value=lambda p: float(p["x"]), region_floor=0.8)


def test_regret_is_the_true_value_of_the_best_observed() -> None:
    # trial 1 looks best (noise) but is truly worse than trial 0
    trials = [_trial(0, 0.7, 0.70, 2.0), _trial(1, 0.6, 0.75, 2.0), _trial(2, 0.9, None, 1.0, True)]
    row = run_metrics(trials, TRUTH, "sim_gpu_s")
    assert row["best_true"] == 0.6 and row["regret"] == pytest.approx(0.4)
    assert (row["cost"], row["n"], row["pruned"]) == (5.0, 3, 1)
    assert row["best_pruned"] is True  # 0.9 > the region's floor 0.8 and > the best's 0.6
    assert row["curve"] == [(2.0, 0.7), (4.0, 0.6), (5.0, 0.6)]


def test_a_pruned_trial_outside_the_region_or_below_the_winner_is_no_loss() -> None:
    trials = [_trial(0, 0.95, 0.95, 2.0), _trial(1, 0.9, None, 1.0, True)]
    assert run_metrics(trials, TRUTH, "sim_gpu_s")["best_pruned"] is False
    trials = [_trial(0, 0.5, 0.5, 2.0), _trial(1, 0.75, None, 1.0, True)]
    assert run_metrics(trials, TRUTH, "sim_gpu_s")["best_pruned"] is False


def test_pre_pruned_trials_count_nowhere() -> None:
    pre = _trial(1, 0.99, None, 0.0, True)
    pre.user_attrs["end_reason"] = "memory_estimate"
    row = run_metrics([_trial(0, 0.5, 0.5, 2.0), pre], TRUTH, "sim_gpu_s")
    assert (row["n"], row["pruned"], row["best_pruned"]) == (1, 0, False)


def test_anytime_auc_is_the_normalised_area_under_the_incumbent() -> None:
    assert anytime_auc([(5.0, 1.0)], 10.0, 1.0) == pytest.approx(0.5)  # nothing until half
    assert anytime_auc([(2.0, 0.5), (4.0, 1.0)], 8.0, 1.0) == pytest.approx((1 + 4) / 8)
    assert anytime_auc([(4.0, 0.5), (12.0, 1.0)], 8.0, 1.0) == pytest.approx(2 / 8)  # clipped


def test_aggregate_against_no_pruning() -> None:
    none = [{"cost": 10.0, "regret": 0.0, "n": 4, "pruned": 0, "best_pruned": False,
             "curve": [(10.0, 1.0)]}] * 3  # fmt: skip
    cheap = [{"cost": 4.0, "regret": r, "n": 4, "pruned": 2, "best_pruned": r > 0,
              "curve": [(4.0, 1.0 - r)]} for r in (0.0, 0.1, 0.0)]  # fmt: skip
    out = aggregate({"none": none, "cheap": cheap}, optimum=1.0)
    assert out["cheap"]["gpu_s_frac"] == 0.4 and out["cheap"]["pruned_frac"] == 0.5
    assert out["cheap"]["best_regret"] == 0.0 and out["cheap"]["best_pruned"] == 1
    assert out["none"]["anytime_auc"] == 0.0 and out["cheap"]["anytime_auc"] == 0.6


def test_a_tiny_run_of_the_real_supervisor(tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    argv = ["--workloads", "bench/workloads/bloom24.yaml", "--pruners", "none,hpo", "--seeds", "1",
            "--trials", "3", "--par", "2", "--time-scale", "0.0005", "--criteria-seeds", "0",
            "--json", str(out), "--png", str(tmp_path / "q.png")]  # fmt: skip
    assert quality.main(argv) == 0
    result: dict[str, Any] = json.loads(out.read_text())
    wl = result["workloads"]["bloom24"]
    assert wl["default"] == "hpo" and wl["optimum"] == pytest.approx(0.945, abs=1e-3)
    assert set(wl["pruners"]) == {"none", "hpo"}
    keys = {"best_regret", "gpu_s_frac", "pruned_frac", "best_pruned", "anytime_auc"}
    assert keys <= set(wl["pruners"]["hpo"])
    assert wl["pruners"]["none"]["gpu_s_frac"] == 1.0
    assert wl["pruners"]["none"]["seeds"][0]["n"] == 3
    assert (tmp_path / "q.png").stat().st_size > 1000

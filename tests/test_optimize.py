"""``hpo.optimize(study, objective, …)`` ports Optuna's own examples by one line: each script
below is an Optuna example with ``study.optimize(objective, n_trials=N, n_jobs=J)`` replaced by
``hpo.optimize(study, objective, n_trials=N, par=J)``. Real processes, in a directory outside
the repository, no PYTHONPATH."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import query
from tests.test_any_callable import run_script

QUADRATIC_TWICE = """
import optuna
import hpo

def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    return (x - 2) ** 2

study = optuna.create_study(study_name="quadratic")  # in memory, as in Optuna's README
study.enqueue_trial({"x": 2.0})
hpo.optimize(study, objective, n_trials=5, par=2)
print("first", len(study.trials), study.trials[0].state.name, study.trials[0].value)
seen = []
hpo.optimize(study, lambda trial: objective(trial), n_trials=3, par="auto",
             callbacks=[lambda s, t: seen.append(t.number)])
print("second", len(study.trials), sorted(seen), study.best_trial.number in range(8))
print("best", study.best_value == min(t.value for t in study.trials))
print("distinct", len({t.params["x"] for t in study.trials}))
"""


def test_a_quadratic_run_twice_on_one_in_memory_study_adds_trials(tmp_path: Path) -> None:
    proc = run_script(tmp_path, QUADRATIC_TWICE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "first 5 COMPLETE 0.0" in proc.stdout, proc.stdout  # the enqueued trial ran
    assert "second 8 [5, 6, 7] True" in proc.stdout and "best True" in proc.stdout, proc.stdout
    assert "distinct 8" in proc.stdout, proc.stdout  # two workers never propose the same x
    db = tmp_path / "_optuna" / "quadratic.db"
    assert query(db, "select count(*) from trials where state = 'COMPLETE'") == [(8,)]


SKLEARN = """
import optuna
import sklearn.datasets
import sklearn.ensemble
import sklearn.model_selection
import sklearn.svm
import hpo


def objective(trial):
    iris = sklearn.datasets.load_iris()
    x, y = iris.data, iris.target
    classifier_name = trial.suggest_categorical("classifier", ["SVC", "RandomForest"])
    if classifier_name == "SVC":
        svc_c = trial.suggest_float("svc_c", 1e-10, 1e10, log=True)
        classifier_obj = sklearn.svm.SVC(C=svc_c, gamma="auto")
    else:
        rf_max_depth = trial.suggest_int("rf_max_depth", 2, 32, log=True)
        classifier_obj = sklearn.ensemble.RandomForestClassifier(
            max_depth=rf_max_depth, n_estimators=10
        )
    score = sklearn.model_selection.cross_val_score(classifier_obj, x, y, n_jobs=1, cv=3)
    return score.mean()


study = optuna.create_study(
    direction="maximize", storage="sqlite:///example.db", study_name="sklearn",
    sampler=optuna.samplers.TPESampler(n_startup_trials=4),
)
hpo.optimize(study, objective, n_trials=10, par=2)
print("trials", len(study.trials), study.best_value > 0.9)
for t in study.trials:
    other = "rf_max_depth" if t.params["classifier"] == "SVC" else "svc_c"
    assert other not in t.params, t.params
print("conditional ok")
"""


def test_optunas_sklearn_example_with_conditional_parameters(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    proc = run_script(tmp_path, SKLEARN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trials 10 True" in proc.stdout and "conditional ok" in proc.stdout, proc.stdout
    assert not list(tmp_path.glob("_optuna/*.db"))  # the study's own RDB storage holds them
    assert query(tmp_path / "example.db", "select count(*) from trials") == [(10,)]


PRUNING = """
import optuna
import sklearn.datasets
import sklearn.linear_model
import sklearn.model_selection
import hpo
from hpo.pruners import PatientHyperbandPruner


def objective(trial):
    iris = sklearn.datasets.load_iris()
    classes = list(set(iris.target))
    train_x, valid_x, train_y, valid_y = sklearn.model_selection.train_test_split(
        iris.data, iris.target, test_size=0.25, random_state=0
    )
    alpha = trial.suggest_float("alpha", 1e-5, 1e-1, log=True)
    clf = sklearn.linear_model.SGDClassifier(alpha=alpha)
    for step in range(20):
        clf.partial_fit(train_x, train_y, classes=classes)
        intermediate_value = 1.0 - clf.score(valid_x, valid_y)
        trial.report(intermediate_value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return 1.0 - clf.score(valid_x, valid_y)


for name, pruner in [
    ("median", optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)),
    ("patient", PatientHyperbandPruner(min_resource=2, max_resource=20, patience=1)),
]:
    study = optuna.create_study(study_name=name, pruner=pruner)
    hpo.optimize(study, objective, n_trials=14, par=2)
    states = [t.state.name for t in study.trials]
    print(name, len(states), states.count("PRUNED") > 0, states.count("COMPLETE") > 0)
"""


def test_optunas_pruning_example_with_optunas_and_hpos_pruner(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    proc = run_script(tmp_path, PRUNING, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "median 14 True True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "patient 14 True True" in proc.stdout, proc.stdout + proc.stderr[-2000:]


CATCH_AND_TIMEOUT = """
import time
import optuna
import hpo


def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 2:
        raise ValueError("bad x")
    return x


study = optuna.create_study(study_name="caught")
hpo.optimize(study, objective, n_trials=5, par=1, catch=(ValueError,))
print("caught", sorted(t.state.name for t in study.trials).count("COMPLETE"))
study = optuna.create_study(study_name="raised")
try:
    hpo.optimize(study, objective, n_trials=5, par=1)
except hpo.TrialFailed as e:
    print("raised", e)
study = optuna.create_study(study_name="timed")
start = time.monotonic()
hpo.optimize(study, lambda t: time.sleep(0.5) or t.suggest_float("x", 0, 1), timeout=15, par=2)
print("timeout", 15 < time.monotonic() - start < 40, 2 < len(study.trials) < 60)
"""


def test_catch_and_timeout_mean_what_they_mean_in_optuna(tmp_path: Path) -> None:
    proc = run_script(tmp_path, CATCH_AND_TIMEOUT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "caught 5" in proc.stdout, proc.stdout
    assert "raised trial 2 failed: ValueError: bad x" in proc.stdout, proc.stdout
    assert "timeout True True" in proc.stdout, proc.stdout


SLOW = """
import sys
import time
import optuna
import hpo

study = optuna.create_study(study_name="slow")


def objective(trial):
    x = trial.suggest_float("x", 0, 1)
    time.sleep(float(sys.argv[1]))
    return x


try:
    hpo.optimize(study, objective, n_trials=int(sys.argv[2]), par=2)
except KeyboardInterrupt:
    print("KeyboardInterrupt", len(study.trials), flush=True)
    raise
print("done", len(study.trials), flush=True)
"""


def _running(db: Path) -> int:
    try:
        return int(query(db, "select count(*) from trials where state = 'RUNNING'")[0][0])
    except sqlite3.Error:  # not created yet
        return 0


def _is_worker(cmdline: list[str]) -> bool:
    return any("spawn_main" in part for part in cmdline) and "resource_tracker" not in str(cmdline)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_ctrl_c_during_optimize_stops_now_and_a_second_run_resumes(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_CONFIG_DIR")}
    proc = subprocess.Popen(
        [sys.executable, "slow.py", "60", "4"],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = tmp_path / "_optuna" / "slow.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _running(db) < 2:  # both workers run a trial
        time.sleep(0.5)
    workers = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if _is_worker(p.cmdline())
    ]
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt 2" in out, out + err[-3000:]
    assert len(workers) == 2 and not [p for p in workers if _alive(p)]  # no worker left
    ends = query(
        db, "select value_json from trial_user_attributes where key = 'end_reason' order by 1"
    )
    assert ends == [('"interrupted"',), ('"interrupted"',)], ends
    again = subprocess.run(
        [sys.executable, "slow.py", "0", "2"],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "done 4" in again.stdout, again.stderr[-3000:]

"""Spaces as Optuna objectives state them: learned from the ``trial.suggest_*`` calls
(conditional parameters too), sampled before each later trial starts; Optuna's default
direction, and several objectives. Real processes, a script outside the repository."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import query
from tests.test_any_callable import run_script

CONDITIONAL = """
import hpo


def objective(trial):
    kind = trial.suggest_categorical("kind", ["a", "b"])
    if kind == "a":
        return trial.suggest_float("a_x", -1, 1) ** 2
    # first seen after the space was learned from the first trials (unless they took it)
    return 1 + trial.suggest_int("b_n", 1, 4)


study = hpo.tune(
    objective, n_trials=12, par=2, sampler="random", name="cond", max_failures_in_a_row=2
)
assert all(t.state.name == "COMPLETE" for t in study.trials), study.trials
for t in study.trials:
    expected = {"kind", "a_x"} if t.params["kind"] == "a" else {"kind", "b_n"}
    assert set(t.params) == expected, t.params  # what the objective asked for, nothing more
print("best", round(study.best_value, 3) < 1, study.direction.name)

pareto = hpo.tune(
    lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)),
    n_trials=4,
    par=2,
    directions=["minimize", "maximize"],
    name="two",
)
print("pareto", len(pareto.best_trials) >= 1, [d.name for d in pareto.directions])
"""


def test_a_learned_space_with_conditional_parameters(tmp_path: Path) -> None:
    proc = run_script(tmp_path, CONDITIONAL, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best True MINIMIZE" in proc.stdout, proc.stdout
    assert "pareto True ['MINIMIZE', 'MAXIMIZE']" in proc.stdout, proc.stdout
    db = tmp_path / "_optuna" / "cond.db"
    key = "hpo:learned_space"
    rows = query(db, "select value_json from study_system_attributes where key = ?", key)
    assert set(json.loads(rows[0][0])) == {"kind", "a_x", "b_n"}
    # the trials asked after the first finished were sampled before they started
    fixed = query(
        db,
        "select t.number from trials t join trial_system_attributes a using (trial_id) "
        "where a.key = 'fixed_params' order by t.number",
    )
    assert len(fixed) >= 8, fixed
    grows = [ln for ln in proc.stderr.splitlines() if "first seen" in ln]
    assert len(grows) <= 1, grows  # once, whatever the number of workers


def test_fixed_values_are_what_suggest_returns_and_enqueued_ones_win() -> None:
    """The Optuna names presampling relies on (the ``fixed_params`` system attribute and the
    trial's copy of it) still mean what they did."""
    import optuna

    from hpo.storage import _private, trial_id_of

    study = optuna.create_study()
    study.enqueue_trial({"y": 7})
    trial = study.ask()
    frozen = trial.storage.get_trial(trial_id_of(trial))
    fixed = _private.fix_params(trial, frozen, {"x": 0.25, "y": 1, "unused": "a"})
    assert fixed == {"x": 0.25, "y": 7, "unused": "a"}
    assert trial.suggest_float("x", 0, 1) == 0.25 and trial.suggest_int("y", 0, 9) == 7
    study.tell(trial, 1.0)
    assert study.trials[0].params == {"x": 0.25, "y": 7}  # only what was suggested


def test_a_study_file_without_a_space_learns_it_too(tmp_path: Path) -> None:
    """The study-file door: no ``space:``, an Optuna-style ``objective(trial)``."""
    import subprocess
    import sys

    from tests.test_user_project import _env

    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "quad.py").write_text(
        "def objective(trial):\n    return (trial.suggest_float('x', -5, 5) - 1) ** 2\n"
    )
    (tmp_path / "conf" / "study" / "quad.yaml").write_text(
        "name: quad\nobjective: quad:objective\ndirection: minimize\nn_trials: 6\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "tune", "study=quad", "par=2", "sampler=random"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = tmp_path / "_optuna" / "quad.db"
    assert query(db, "select count(*) from trials where state = 'COMPLETE'") == [(6,)]
    assert query(db, "select distinct param_name from trial_params") == [("x",)]

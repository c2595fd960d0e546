"""A user's own study outside hpo's repository, as a new user writes and runs it.

Everything runs in an empty temporary directory with real processes and no PYTHONPATH: the
objective must be importable because ``hpo`` runs from the project directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, query

OBJECTIVE = '''
import optuna


def objective(trial, cfg):
    """Good x learns epoch after epoch; bad x stalls at once (so the pruner stops it)."""
    x = trial.params["x"]
    best = 0.0
    for epoch in range(1, cfg.study.epochs + 1):
        value = 1.0 - abs(x - 0.3) - (0.0 if abs(x - 0.3) > 0.2 else 0.5 / epoch)
        best = max(best, value)
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return best
'''

STUDY = """
name: x
objective: xobj:objective
space:
  x: {type: float, low: 0.0, high: 1.0}
n_trials: 16
epochs: 9
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HPO_CONFIG_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _hpo(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "myproject"
    (project / "conf" / "study").mkdir(parents=True)
    (project / "xobj.py").write_text(OBJECTIVE)
    (project / "conf" / "study" / "x.yaml").write_text(STUDY)
    return project


def test_a_two_file_study_runs_from_its_own_directory(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert not project.is_relative_to(ROOT)
    args = ("tune", "study=x", "par=2", "sampler=random", "pruner.min_resource=1")
    proc = _hpo(project, *args, "pruner.patience=1")
    assert proc.returncode == 0, proc.stderr
    db = project / "_optuna" / "x.db"
    assert f"in {db}" in proc.stderr and "(new)" in proc.stderr  # the absolute location
    states = dict(query(db, "select state, count(*) from trials group by state"))
    assert states.get("COMPLETE", 0) > 0 and states.get("PRUNED", 0) > 0, states
    assert states["COMPLETE"] + states["PRUNED"] == 16
    again = _hpo(project, *args, "study.n_trials=18")
    assert again.returncode == 0 and "(resumed with 16 finished trials)" in again.stderr
    # the look commands find the study from the project too, and speak of its own parameters
    status = _hpo(project, "status", "study=x", "--once")
    assert status.returncode == 0, status.stderr
    assert "18/18 finished toward the run's target (2 by this run)" in status.stdout
    stats = _hpo(project, "stats", "study=x", "--json")
    assert stats.returncode == 0 and '"x"' in stats.stdout  # grouped by the study's parameter
    bad = _hpo(project, "stats", "study=x", "--group-by", "model")
    assert bad.returncode == 2 and "--group-by 'model' is not a parameter" in bad.stderr


def test_hpo_init_writes_a_study_that_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proc = _hpo(tmp_path, "init", "mine")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mine.py").is_file() and (tmp_path / "conf/study/mine.yaml").is_file()
    run = _hpo(tmp_path, "tune", "study=mine", "par=2", "study.n_trials=3", "study.epochs=3")
    assert run.returncode == 0, run.stderr
    db = tmp_path / "_optuna" / "mine.db"
    done = query(db, "select count(*) from trials where state in ('COMPLETE', 'PRUNED')")
    assert done == [(3,)]
    # the memory prior's step builder is imported from the project too (CPU: no prior, so
    # call it the way the tracer does)
    code = (
        "import mine, hpo.config as c; cfg = c.compose(['study=mine']); "
        "mine.build_step({'lr': 0.01, 'width': 32, 'depth': 2, 'batch_size': 16}, cfg)"
    )
    check = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=_env()
    )
    assert check.returncode == 0, check.stderr


def test_the_python_api_runs_a_study_from_a_script(tmp_path: Path) -> None:
    script = tmp_path / "search.py"
    script.write_text(
        OBJECTIVE
        + textwrap.dedent(
            """
            import hpo

            if __name__ == "__main__":
                study = hpo.tune(
                    objective,
                    space={"x": {"type": "float", "low": 0.0, "high": 1.0}},
                    n_trials=5,
                    par=2,
                    sampler="random",
                    study__epochs=3,
                )
                print("finished", len(study.trials), study.best_value > 0)
                print("loaded", len(hpo.load_study("objective").trials))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "finished 5 True" in proc.stdout and "loaded 5" in proc.stdout
    assert (tmp_path / "_optuna" / "objective.db").is_file()


def test_the_python_api_raises_the_clis_one_line_errors(tmp_path: Path) -> None:
    import hpo

    with pytest.raises(hpo.ConfigError, match="objective must be a callable or 'module:function'"):
        hpo.tune(42, space={"x": {"type": "float"}}, n_trials=1)  # type: ignore[arg-type]
    with pytest.raises(hpo.ConfigError, match="study.space.x needs low and high"):
        hpo.tune("m:f", space={"x": {"type": "float"}}, n_trials=1, config_dir=str(tmp_path))
    with pytest.raises(hpo.ConfigError, match="no study 'nothing'"):
        hpo.load_study("nothing", storage=f"sqlite:///{tmp_path / 'none.db'}")


BAD_STUDIES = {
    "no_objective": (
        "name: a\nspace:\n  x: {type: float, low: 0, high: 1}\nn_trials: 2\n",
        "study.objective is required",
    ),
    "bad_direction": (
        "name: b\nobjective: m:f\ndirection: max\nn_trials: 2\n",
        "study.direction must be maximize or minimize, got 'max'",
    ),
    "yaml_error": (
        "name: c\nobjective: m:f\nspace:\n  x: {type: float, low: 0\n",
        r"yaml_error.yaml:5: YAML syntax error",
    ),
    "typo": (
        "name: d\nobjective: m:f\nspace:\n  x: {type: float, low: 0, high: 1}\nepoch: 2\n",
        r"Key 'epoch' not in 'StudyConf' \(key study.epoch\)",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_STUDIES))
def test_a_bad_study_file_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    text, message = BAD_STUDIES[name]
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "conf" / "study" / f"{name}.yaml").write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _hpo(tmp_path, "tune", f"study={name}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo: error: "), proc.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_hpo_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("# my own work\n")
    proc = _hpo(tmp_path, "init", "mine")
    assert proc.returncode == 2 and "never overwrites" in proc.stderr
    assert (tmp_path / "mine.py").read_text() == "# my own work\n"
    assert not (tmp_path / "conf").exists()
    bad = _hpo(tmp_path, "init", "not-a-name")
    assert bad.returncode == 2 and "must be a Python identifier" in bad.stderr

"""``hydra/sweeper=hpo``: real ``--multirun`` processes of apps written into tmp directories
outside the repository (no PYTHONPATH: Hydra finds the plugin in the installed distribution),
with hydra-optuna-sweeper's example configs where they apply."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.contract import Attr

SPHERE = """
import os
import hydra
import hpo
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg: DictConfig) -> float:
    trial = hpo.current_trial()
    num = HydraConfig.get().job.num if HydraConfig.get().mode.name == "MULTIRUN" else None
    with open("job.txt", "w") as f:  # in the job's directory when hydra.job.chdir is true
        f.write(f"{os.getcwd()} {num} {trial.number if trial else None}")
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return cfg.x**2 + cfg.y**2


if __name__ == "__main__":
    sphere()
"""

SPHERE_CONF = """
defaults:
  - override hydra/sweeper: hpo
  - override hydra/sweeper/sampler: tpe

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: sphere
    storage: null
    n_trials: 20
    n_jobs: 1
    max_failure_rate: 0.0
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5 ,0 ,5)

x: 1
y: 1
z: 1
error: false
"""


def write_app(root: Path, source: str, config: str, name: str = "app.py") -> Path:
    (root / "conf").mkdir(parents=True, exist_ok=True)
    (root / name).write_text(textwrap.dedent(source))
    (root / "conf" / "config.yaml").write_text(textwrap.dedent(config))
    return root


def run_app(
    root: Path, *args: str, name: str = "app.py", ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, name, *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def study_of(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/_optuna/{name}.db")


def results(sweep_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


def test_discovered_from_any_directory(tmp_path: Path) -> None:
    code = (
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "print([p.__name__ for p in Plugins.instance().discover(Sweeper)])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "HpoSweeper" in out.stdout, out.stderr


def test_sphere_seeded_tpe_as_hydra_jobs(tmp_path: Path) -> None:
    """The Optuna sweeper's sphere example: every trial a Hydra job in its own directory,
    chdir honoured, HydraConfig and hpo.current_trial() inside, a fixed parameter and a deleted
    key from the command line, the results file matching the study."""
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    args = ["-m", "hydra.sweep.dir=sweep", "hydra.job.chdir=True", "hydra.sweeper.n_jobs=2"]
    run_app(root, *args, "hydra.sweeper.n_trials=12", "y=0", "~z")
    study = study_of(root, "sphere")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 12
    returns = results(root / "sweep")
    assert returns["best_value"] == study.best_value
    assert returns["best_params"] == study.best_params
    assert "y" not in study.best_params  # fixed: an override, not a parameter
    assert study.best_value == min(t.params["x"] ** 2 for t in trials)  # y=0 reached the task
    for trial in trials:
        job_dir = root / "sweep" / str(trial.number)
        cwd, num, number = (job_dir / "job.txt").read_text().split()
        assert Path(cwd).resolve() == job_dir.resolve()
        assert int(num) == int(number) == trial.number
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text())
        assert config["x"] == trial.params["x"] and config["y"] == 0 and "z" not in config
        assert (job_dir / "app.log").exists()  # the job's own logging
        assert trial.user_attrs[Attr.END_REASON] == "complete"
        assert "peak_rss_mib" in trial.user_attrs
    assert (root / "sweep" / "multirun.yaml").exists()


def test_resume_reaches_the_target_and_adds_nothing_after(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    run_app(root, "-m", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=7")
    assert len(study_of(root, "sphere").trials) == 3
    run_app(root, "-m", "hydra.sweeper.n_trials=5")
    assert len(study_of(root, "sphere").trials) == 5
    proc = run_app(root, "-m", "hydra.sweeper.n_trials=5")
    assert len(study_of(root, "sphere").trials) == 5
    assert "nothing to do" in proc.stdout + proc.stderr


def test_single_run_cfg_and_info_are_unaffected(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    run_app(root, "x=3", "y=4")
    assert (root / "job.txt").read_text().split()[2] == "None"  # no trial when run alone
    cfg = run_app(root, "--cfg", "hydra").stdout
    assert "hpo_sweeper.HpoSweeper" in cfg
    assert "HpoSweeper" in run_app(root, "--info", "plugins").stdout
    assert not (root / "_optuna").exists() and not (root / "multirun").exists()


CUSTOM = """
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def multi_dimensional_sphere(cfg: DictConfig) -> float:
    return cfg.w**2 + cfg.x**2 + cfg.y**2 + cfg.z**2


def configure(cfg: DictConfig, trial) -> None:
    x_value = trial.params["x"]
    trial.suggest_float(
        "z", x_value - cfg.max_z_difference_from_x, x_value + cfg.max_z_difference_from_x
    )
    trial.suggest_float("+w", 0.0, 1.0)  # a new key: +w


if __name__ == "__main__":
    multi_dimensional_sphere()
"""

CUSTOM_CONF = """
defaults:
  - override hydra/sweeper: hpo

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: custom-search-space
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, 0.5)
      y: choice(-5, 0, 5)
    custom_search_space: custom-search-space-objective.configure

x: 1
y: 1
z: 100
max_z_difference_from_x: 0.5
"""


def test_custom_search_space_constraint_holds_in_every_trial(tmp_path: Path) -> None:
    name = "custom-search-space-objective.py"
    root = write_app(tmp_path / "app", CUSTOM, CUSTOM_CONF, name=name)
    args = ["-m", "hydra.sweep.dir=sweep", "hydra/sweeper/sampler=random"]
    run_app(root, *args, "hydra.sweeper.n_trials=8", "max_z_difference_from_x=0.3", name=name)
    trials = study_of(root, "custom-search-space").trials
    assert len(trials) == 8 and all(t.state is TrialState.COMPLETE for t in trials)
    for trial in trials:
        assert abs(trial.params["x"] - trial.params["z"]) <= 0.3
        assert 0 <= trial.params["+w"] <= 1
        config = yaml.safe_load(
            (root / "sweep" / str(trial.number) / ".hydra/config.yaml").read_text()
        )
        assert config["w"] == trial.params["+w"] and config["z"] == trial.params["z"]
    best = results(root / "sweep")["best_params"]
    assert abs(best["x"] - best["z"]) <= 0.3


MULTI = """
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def binh_and_korn(cfg: DictConfig):
    x, y = cfg.x, cfg.y
    return 4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2
"""

MULTI_CONF = """
defaults:
  - override hydra/sweeper: hpo
  - override hydra/sweeper/sampler: nsgaii

hydra:
  sweeper:
    sampler:
      seed: 123
    direction: [minimize, minimize]
    study_name: multi-objective
    storage: null
    n_trials: 20
    n_jobs: 1
    params:
      x: range(0, 5, step=0.5)
      y: range(0, 3, step=0.5)

x: 1
y: 1
"""


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def test_multi_objective_pareto_solutions(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", MULTI + "\nbinh_and_korn()\n", MULTI_CONF)
    run_app(root, "-m", "hydra.sweep.dir=sweep", "hydra.sweeper.n_trials=10")
    solutions = results(root / "sweep")["solutions"]
    front = study_of(root, "multi-objective").best_trials
    assert len(solutions) == len(front) >= 1
    for one in solutions:
        assert one["params"]["x"] % 0.5 == 0 and one["params"]["y"] % 0.5 == 0
        for other in solutions:
            assert not _dominates(other["values"], one["values"])


def test_grid_smaller_than_n_trials_ends_the_sweep(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    grid = ["hydra/sweeper/sampler=grid", "x=range(-1, 1)", "y=choice(-1, 0)"]
    run_app(root, "-m", "hydra.sweep.dir=sweep", "hydra.sweeper.n_trials=10", *grid)
    trials = study_of(root, "sphere").trials
    points = sorted((t.params["x"], t.params["y"]) for t in trials)
    assert points == [(x, y) for x in (-1, 0, 1) for y in (-1, 0)]
    assert results(root / "sweep")["best_value"] == 0


@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_failure_rate(tmp_path: Path, max_failure_rate: float) -> None:
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    proc = run_app(
        root,
        "-m",
        "hydra.sweeper.n_trials=12",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/sampler=random",
        f"hydra.sweeper.max_failure_rate={max_failure_rate}",
        "error=true",
        ok=False,
    )
    trials = study_of(root, "sphere").trials
    failed = [t for t in trials if t.user_attrs.get(Attr.END_REASON) == "error"]
    for trial in failed:  # the traceback is kept, the task's own lines in it
        error = trial.user_attrs[Attr.ERROR]  # the app's file and source line in it
        assert 'app.py", line' in error and 'raise RuntimeError("cfg.error is True")' in error
        assert error.endswith("RuntimeError: cfg.error is True")
    if max_failure_rate < 1.0:
        assert proc.returncode == 1
        assert "RuntimeError: cfg.error is True" in proc.stderr
        assert 2 <= len(failed) < 12  # stopped once n_jobs trials had ended
    else:
        assert proc.returncode == 0, proc.stderr[-2000:]
        # every task failed: the sweep gave up after n_trials failures in a row, exit 0
        assert len(failed) == 12 and all(t.state is TrialState.FAIL for t in trials)


PRUNE = """
import hydra
import hpo
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def train(cfg: DictConfig) -> float:
    trial = hpo.current_trial()
    loss = 0.0
    for step in range(cfg.epochs):
        loss = cfg.x**2 + 1.0 / (step + 1)  # a worse x never catches up
        if trial is not None:
            trial.report(loss, step)
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned()
    return loss


if __name__ == "__main__":
    train()
"""

PRUNE_CONF = """
defaults:
  - override hydra/sweeper: hpo
  - override hydra/sweeper/sampler: random

hydra:
  sweeper:
    sampler:
      seed: 3
    study_name: prune
    n_trials: 14
    n_jobs: 2
    params:
      x: interval(-10, 10)

x: 1.0
epochs: 9
"""


def test_an_app_that_prunes(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", PRUNE, PRUNE_CONF)
    run_app(root, "-m")
    trials = study_of(root, "prune").trials
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 14 and pruned and complete
    assert all(t.user_attrs[Attr.END_REASON] == "pruned" for t in pruned)
    assert all(t.last_step is not None and t.last_step < 8 for t in pruned)


SEGFAULT = """
import ctypes
import time
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def task(cfg: DictConfig) -> float:
    time.sleep(cfg.sleep_s)
    if cfg.x < 0:
        ctypes.string_at(0)  # a segfault
    return cfg.x


if __name__ == "__main__":
    task()
"""

SEGFAULT_CONF = """
defaults:
  - override hydra/sweeper: hpo

hydra:
  sweeper:
    study_name: crashy
    n_trials: 6
    n_jobs: 2
    hpo:
      faults.max_retries: 0
    params:
      x: choice(-1, 1, 2)

x: 1
sleep_s: 0.0
"""


def test_a_segfaulting_task_fails_its_trial_only(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SEGFAULT, SEGFAULT_CONF)
    run_app(root, "-m", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=1")
    trials = study_of(root, "crashy").trials
    died = [t for t in trials if t.state is TrialState.FAIL]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 6 and died  # the sweep went on to its target
    assert all(t.params["x"] == -1 and t.user_attrs[Attr.END_REASON] == "worker_died" for t in died)
    assert all(t.params["x"] > 0 for t in complete)


def test_two_trials_overlap_with_n_jobs_2(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SEGFAULT, SEGFAULT_CONF)
    run_app(root, "-m", "hydra.sweeper.n_trials=2", "x=choice(1, 2)", "sleep_s=1.5")
    first, second = study_of(root, "crashy").trials
    assert first.datetime_start and first.datetime_complete
    assert second.datetime_start and second.datetime_complete
    assert first.datetime_start < second.datetime_complete
    assert second.datetime_start < first.datetime_complete
    assert first.user_attrs[Attr.WORKER_PID] != second.user_attrs[Attr.WORKER_PID]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("x=interval(5, 1)", r"x=interval\(5, 1\)': start must be <= end"),
        ("x=tag(log, interval(0, 1))", r"a log scale needs start > 0"),
        ("hydra.sweeper.max_failure_rate=2", r"max_failure_rate must be in \[0, 1\], got 2"),
        ("hydra.sweeper.direction=up", r"direction must be minimize, maximize"),
        ("hydra/sweeper/sampler=grid", r"the grid sampler needs discrete values"),
        ("nope=choice(1, 2)", r"Could not override 'nope'"),  # not a key of the app
    ],
)
def test_bad_entry_is_one_line_exit_2_nothing_written(
    tmp_path: Path, bad: str, message: str
) -> None:
    import re

    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    extra = ["x=interval(0, 1)"] if "grid" in bad else []
    proc = run_app(root, "-m", bad, *extra, ok=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpo: ") and re.search(message, lines[0])
    assert sorted(p.name for p in root.iterdir()) == ["app.py", "conf"]


def test_look_commands_find_the_sweep(tmp_path: Path) -> None:
    root = write_app(tmp_path / "app", SPHERE, SPHERE_CONF)
    run_app(root, "-m", "hydra.sweeper.n_trials=2")
    hpo = [sys.executable, "-m", "hpo.cli"]
    out = subprocess.run(
        [*hpo, "stats", "--json", "--sweep", "sphere"], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert '"COMPLETE"' in out.stdout
    missing = subprocess.run(
        [*hpo, "stats", "--sweep", "nope"], cwd=root, capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stderr.strip().endswith("nope.db does not exist")
    stop = subprocess.run(
        [*hpo, "stop", "--sweep", "sphere"], cwd=root, capture_output=True, text=True
    )
    assert stop.returncode == 0 and "stop (drain) requested for study sphere" in stop.stdout


def test_two_nodes_share_one_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    """The same command on two nodes (two node ids) against one PostgreSQL storage: one study,
    both nodes in it, n_trials in all."""
    import uuid

    name = f"sweep_{uuid.uuid4().hex[:8]}"
    args = ["-m", f"hydra.sweeper.study_name={name}", f"hydra.sweeper.storage={postgres_url}"]
    args += ["hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1", "x=choice(1, 2)", "sleep_s=0.5"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = []
    for node in ("node-a", "node-b"):
        root = write_app(tmp_path / node, SEGFAULT, SEGFAULT_CONF)
        cmd = [sys.executable, "app.py", *args]
        node_env = {**env, "HPO_NODE_ID": node}
        procs.append(subprocess.Popen(cmd, cwd=root, env=node_env, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name=name, storage=postgres_url)
    complete = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert len(complete) == 6
    assert {t.user_attrs[Attr.NODE_ID] for t in complete} <= {"node-a", "node-b"}
    attrs = study._storage.get_study_system_attrs(study._study_id)
    nodes = {key for key in attrs if key.startswith("hpo:node:")}
    assert nodes == {"hpo:node:node-a", "hpo:node:node-b"}  # both joined the one study

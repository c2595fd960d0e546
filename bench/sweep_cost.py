"""What a Hydra sweep with ``hydra/sweeper=hpo`` costs per trial, against ``hpo tune`` on the
same objective and against Hydra's basic sweeper running the same jobs one after another.

``python -m bench.sweep_cost [--trials 50] [--par 2] [--sleeps 0,1] [--json OUT]``

For each objective (``x**2 + y**2`` after sleeping 0 s, 1 s), three commands, each in a fresh
directory and process, the wall time of the whole command divided by ``--trials``:

- ``sweep``: ``python app.py -m`` with ``hydra/sweeper=hpo`` (random sampler, ``n_jobs=PAR``):
  every trial is a Hydra job (its config composed, its directory and ``.hydra/`` written, its
  log set up) run in one of hpo's worker processes;
- ``hpo_tune``: ``hpo tune study=cost par=PAR`` on a study file with the same space, objective
  and sampler (the objective as ``objective(trial, cfg)``);
- ``basic``: ``python app.py -m hydra/sweeper=basic x=...`` the same number of jobs with
  Hydra's basic sweeper and launcher, one after another in one process (no study, no storage).

Both hpo commands include starting the supervisor and the workers and the SQLite study.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import _cost as cost

APP = """
import time
import hydra


@hydra.main(version_base=None, config_path="conf", config_name="config")
def sphere(cfg) -> float:
    if cfg.sleep_s:
        time.sleep(cfg.sleep_s)
    return cfg.x**2 + cfg.y**2


if __name__ == "__main__":
    sphere()
"""

APP_CONF = """
defaults:
  - override hydra/sweeper: hpo
  - override hydra/sweeper/sampler: random

hydra:
  sweeper:
    study_name: cost
    params:
      x: interval(-5, 5)
      y: interval(-5, 5)

x: 1.0
y: 1.0
sleep_s: 0.0
"""

BASIC_CONF = APP_CONF[APP_CONF.index("x: 1.0") :]  # the app's own keys alone

OBJECTIVE = """
import time


def objective(trial, cfg):
    if cfg.study.extra.sleep_s:
        time.sleep(cfg.study.extra.sleep_s)
    return trial.params["x"] ** 2 + trial.params["y"] ** 2
"""

STUDY = """
name: cost
objective: cost_objective:objective
direction: minimize
n_trials: {trials}
epochs: 2  # the pruner's resource (the objective reports nothing)
space:
  x: {{type: float, low: -5, high: 5}}
  y: {{type: float, low: -5, high: 5}}
extra:
  sleep_s: {sleep}
"""

HOWS = ("sweep", "hpo_tune", "basic")


def _command(how: str, root: Path, trials: int, par: int, sleep: float) -> list[str]:
    if how == "sweep":
        (root / "conf").mkdir()
        (root / "app.py").write_text(APP)
        (root / "conf" / "config.yaml").write_text(APP_CONF)
        n = f"hydra.sweeper.n_trials={trials}"
        return [
            sys.executable,
            "app.py",
            "-m",
            n,
            f"hydra.sweeper.n_jobs={par}",
            f"sleep_s={sleep}",
        ]
    if how == "basic":  # the same app and values, without the hpo sweeper's defaults
        (root / "conf").mkdir()
        (root / "app.py").write_text(APP)
        (root / "conf" / "config.yaml").write_text(BASIC_CONF)
        rng = random.Random(0)
        xs = ",".join(f"{rng.uniform(-5, 5):.6f}" for _ in range(trials))
        return [
            sys.executable,
            "app.py",
            "-m",
            "hydra/sweeper=basic",
            f"x={xs}",
            f"sleep_s={sleep}",
        ]
    (root / "conf" / "study").mkdir(parents=True)
    (root / "cost_objective.py").write_text(OBJECTIVE)
    (root / "conf" / "study" / "cost.yaml").write_text(STUDY.format(trials=trials, sleep=sleep))
    hpo = str(Path(sys.executable).with_name("hpo"))
    return [hpo, "tune", "study=cost", f"par={par}", "sampler=random"]


def measure(how: str, sleep: float, trials: int, par: int) -> dict[str, Any]:
    """One command in a fresh directory: seconds, jobs run, ms per trial."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="hpo-sweep-cost-") as directory:
        root = Path(directory)
        cmd = _command(how, root, trials, par, sleep)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=3600)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{how} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        jobs = _jobs(root)
    return {
        "how": how,
        "sleep_s": sleep,
        "trials": trials,
        "jobs": jobs,
        "wall_s": round(elapsed, 3),
        "ms_per_trial": round(1000 * elapsed / trials, 1),
    }


def _jobs(root: Path) -> int:
    """Jobs that ran: Hydra job directories (sweeps), or the study's finished trials."""
    configs = list(root.glob("multirun/*/*/*/.hydra/config.yaml"))
    if configs:
        return len(configs)
    import optuna

    db = root / "_optuna" / "cost.db"
    study = optuna.load_study(study_name="cost", storage=f"sqlite:///{db}")
    return sum(t.state.name == "COMPLETE" for t in study.trials)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| objective | command | jobs | wall s | ms per trial |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| sleep {r['sleep_s']:g} s | {r['how']} | {r['jobs']} | {r['wall_s']:.1f} "
            f"| {r['ms_per_trial']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cost.main("bench.sweep_cost", __doc__, 50, HOWS, measure, table, argv)


if __name__ == "__main__":
    sys.exit(main())

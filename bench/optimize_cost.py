"""What ``hpo.optimize`` costs per trial against ``study.optimize`` with the same ``n_jobs``.

``python -m bench.optimize_cost [--trials 100] [--par 2] [--sleeps 0,1] [--json OUT]``

For each objective (``x**2`` after sleeping 0 s, 1 s), three runs of ``--trials`` trials, each
in a fresh process and a fresh directory: Optuna's ``study.optimize(n_jobs=PAR)`` on an
in-memory study and on SQLite, and ``hpo.optimize(study, objective, par=PAR)`` on the same
in-memory study (hpo runs it on ``./_optuna/<name>.db``). The figure is the wall time of the
call divided by the trials: hpo's includes starting its workers and the supervisor (the time
from the call to the first trial's start is shown apart, and the cost per trial after it).
Both use Optuna's default sampler (TPE). ``--trials 10`` gives a quick run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from typing import Any

from bench import _cost as cost

RUN = """
import datetime, sys, time, optuna, hpo
optuna.logging.set_verbosity(optuna.logging.WARNING)
how, sleep, trials, par = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def objective(trial):
    x = trial.suggest_float("x", -10, 10)
    if sleep:
        time.sleep(sleep)
    return x * x

storage = "sqlite:///optuna.db" if how == "optuna_sqlite" else None
study = optuna.create_study(study_name="cost", storage=storage)
start, wall = time.perf_counter(), datetime.datetime.now()
if how == "hpo":
    hpo.optimize(study, objective, n_trials=trials, par=par, log_level="WARNING")
else:
    study.optimize(objective, n_trials=trials, n_jobs=par)
elapsed = time.perf_counter() - start
done = sum(t.state.name == "COMPLETE" for t in study.trials)
first = min(t.datetime_start for t in study.trials if t.datetime_start is not None)
print(f"RESULT {elapsed:.4f} {done} {(first - wall).total_seconds():.4f}")
"""
HOWS = ("optuna_memory", "optuna_sqlite", "hpo")


def measure(how: str, sleep: float, trials: int, par: int) -> dict[str, Any]:
    """One run in a fresh process and directory: seconds, trials completed, ms per trial."""
    with tempfile.TemporaryDirectory(prefix="hpo-cost-") as directory:
        proc = subprocess.run(
            [sys.executable, "-c", RUN, how, str(sleep), str(trials), str(par)],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{how} sleep={sleep} failed: {proc.stderr[-2000:]}")
    _, elapsed, done, first = line.split()
    seconds, startup = float(elapsed), max(0.0, float(first))
    return {
        "how": how,
        "sleep_s": sleep,
        "trials": int(done),
        "seconds": round(seconds, 3),
        "ms_per_trial": round(1000 * seconds / max(1, int(done)), 1),
        "first_trial_s": round(startup, 2),  # from the call to the first trial's start
        "ms_per_trial_after_start": round(1000 * (seconds - startup) / max(1, int(done)), 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a text table, with hpo's cost over Optuna's in memory per objective."""
    base = {r["sleep_s"]: r["ms_per_trial"] for r in rows if r["how"] == "optuna_memory"}
    head = f"{'objective':>10} {'how':>14} {'trials':>6} {'s':>8} {'ms/trial':>9} {'vs mem':>7}"
    lines = [f"{head} {'1st trial s':>11} {'ms/trial after':>14}"]
    for r in rows:
        ratio = r["ms_per_trial"] / base[r["sleep_s"]] if base.get(r["sleep_s"]) else float("nan")
        lines.append(
            f"{r['sleep_s']:>9g}s {r['how']:>14} {r['trials']:>6} {r['seconds']:>8.2f} "
            f"{r['ms_per_trial']:>9.1f} {ratio:>6.2f}x {r['first_trial_s']:>11.2f} "
            f"{r['ms_per_trial_after_start']:>14.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cost.main("bench.optimize_cost", __doc__, 100, HOWS, measure, table, argv)


if __name__ == "__main__":
    sys.exit(main())

"""No stranded processes or studies: orphans end with their trial, one supervisor per study and
node, changed search spaces, retries a supervisor kill does not consume, a closed pipe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil

from hpo.contract import EndReason
from hpo.supervisor.retry import RetryDecision, RetryPolicy
from tests.conftest import CONF, _env, run_hpo, start_hpo, user_attrs, wait_for

ORPHANS = """
import subprocess, sys, optuna

def objective(trial, cfg):
    tag = str(cfg.study.extra.tag)
    # a child it never waits for, and a daemon that double-forks away from its parent
    subprocess.Popen(["sleep", "300", tag])
    code = "import os, time; os.fork() and os._exit(0); os.setsid(); time.sleep(300)"
    subprocess.Popen([sys.executable, "-c", code, tag], start_new_session=True).wait()
    for epoch in range(1, 3):
        trial.report(float(epoch), epoch)
    return trial.params["x"]
"""


def _with_tag(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if tag in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_no_process_a_trial_starts_outlives_it(tmp_path: Path) -> None:
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "orphans.py").write_text(ORPHANS)
    tag = f"hpo-orphan-{os.getpid()}-{time.monotonic_ns()}"
    (tmp_path / "conf" / "study" / "orph.yaml").write_text(
        "name: orph\nobjective: orphans:objective\nn_trials: 4\nepochs: 2\n"
        "space:\n  x: {type: float, low: 0, high: 1}\n"
        f"extra: {{tag: {tag}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpo.cli", "tune", "study=orph", "par=2", "pruner=none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    try:
        assert proc.returncode == 0, proc.stderr
        assert "left 2 process(es) running: ended" in proc.stderr
        assert _with_tag(tag) == []
    finally:
        for leftover in _with_tag(tag):
            leftover.kill()


def test_a_second_supervisor_of_a_study_is_refused_and_a_killed_one_leaves_no_lock(
    tmp_path: Path,
) -> None:
    args = ("study=toy", "study.epoch_s=0.5", "study.n_trials=50", f"storage.dir={tmp_path}")
    first = start_hpo(tmp_path, *args, "par=1")
    try:
        wait_for(lambda: (tmp_path / "toy.db").is_file(), timeout=60, what="the study")
        second = run_hpo(tmp_path, *args, "par=1")
        assert second.returncode == 2, second.stderr
        assert f"already run by pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    again = run_hpo(tmp_path, *args[:-1], "study.n_trials=1", f"storage.dir={tmp_path}")
    assert again.returncode == 0, again.stderr


def test_an_incompatible_change_of_the_space_is_refused_and_a_wider_range_warned(
    tmp_path: Path,
) -> None:
    base = ("study=toy", "study.epoch_s=0", "study.n_trials=2", f"storage.dir={tmp_path}")
    assert run_hpo(tmp_path, *base).returncode == 0
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    changed = run_hpo(tmp_path, *base, "study.space.family.choices=[a,b,c,d]")
    assert changed.returncode == 2
    assert "study.space.family cannot change" in changed.stderr and "new study.name" in (
        changed.stderr
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before
    wider = run_hpo(tmp_path, *base[:-2], "study.n_trials=3", f"storage.dir={tmp_path}",
                    "study.space.x.high=9.0")  # fmt: skip
    assert wider.returncode == 0
    assert "study.space.x changed from" in wider.stderr


def test_a_reaped_trial_keeps_its_retry_budget() -> None:
    policy = RetryPolicy(frozenset({EndReason.WORKER_DIED}), max_retries=1)
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("attempt", 2)  # its one retry is spent
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    frozen = study.trials[0]
    assert policy.decide(EndReason.WORKER_DIED, frozen) is RetryDecision.EXHAUSTED
    assert policy.decide(EndReason.WORKER_DIED, frozen, charged=False) is RetryDecision.RETRY


def test_stats_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    args = ("study=toy", "study.epoch_s=0", "study.n_trials=3", f"storage.dir={tmp_path}")
    assert run_hpo(tmp_path, *args).returncode == 0
    stats = " ".join([sys.executable, "-m", "hpo.cli", "stats", "--config-dir", str(CONF), *args])
    proc = subprocess.run(
        f"{stats} | head -1", shell=True, cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr


def test_more_workers_than_cpus_is_said(tmp_path: Path) -> None:
    from hpo.execution.procs import available_cpus

    par = available_cpus() + 1
    args = ("study=toy", "study.epoch_s=0", "study.n_trials=1", f"storage.dir={tmp_path}")
    proc = run_hpo(tmp_path, *args, f"par={par}")
    assert proc.returncode == 0 and f"par={par} on" in proc.stderr


_TREND = """
import json, logging, sys
from hpo.execution.procs import RssTrend
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
trend = RssTrend(window=4, min_growth_mib=40.0)
kept, flagged = [], []
for number in range(6):
    kept.append(bytearray(20 * 1024 * 1024))  # a leak: 20 MiB more after every trial
    kept[-1][::4096] = b"x" * len(kept[-1][::4096])  # touched: resident, whatever the heap
    flagged.append(trend.after_trial(number))
steady = RssTrend(window=4, min_growth_mib=40.0)
print(json.dumps([flagged, [steady.after_trial(n) for n in range(6)]]))
"""


def test_a_worker_whose_memory_grows_after_each_trial_is_flagged() -> None:
    """In a process of its own, as a worker is: in the test runner's, memory other tests'
    threads free meanwhile could hide the growth."""
    proc = subprocess.run(
        [sys.executable, "-c", _TREND], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    flagged, steady = json.loads(proc.stdout)
    assert flagged.count(True) == 1  # said once, when the window shows the growth
    assert "RSS grew after each of its last 4 trials" in proc.stderr
    assert not any(steady)


def test_a_leaking_worker_is_replaced_and_a_steady_one_kept(tmp_path: Path) -> None:
    """Workers are recycled on evidence, not by count: one whose RSS grows after each trial
    is replaced; without a leak the same process runs every trial (each new worker re-reads
    the whole study into Optuna's cache, a cost that grows with the study)."""
    (tmp_path / "leaky.py").write_text(
        "HELD = []\n"
        "def objective(trial, cfg):\n"
        "    HELD.append(bytearray(40 * 1024 * 1024))  # 40 MiB kept after every trial\n"
        "    HELD[-1][::4096] = b'x' * len(HELD[-1][::4096])  # touched: resident\n"
        "    return 1.0\n"
        "def steady(trial, cfg):\n"
        "    return 1.0\n"
    )
    base = ["study=toy", "par=1", "study.n_trials=8", f"storage.dir={tmp_path / '_optuna'}"]
    leaky = run_hpo(tmp_path, *base, "study.name=leaky", "study.objective=leaky:objective")
    assert leaky.returncode == 0, leaky.stderr
    assert "RSS grew after each of its last" in leaky.stderr
    assert "recycling worker" in leaky.stderr
    db = tmp_path / "_optuna" / "leaky.db"
    pids = {user_attrs(db, n)["worker_pid"] for n in range(8)}
    assert len(pids) == 2, pids
    steady = run_hpo(tmp_path, *base, "study.name=steady", "study.objective=leaky:steady")
    assert steady.returncode == 0, steady.stderr
    db = tmp_path / "_optuna" / "steady.db"
    assert len({user_attrs(db, n)["worker_pid"] for n in range(8)}) == 1
    assert "recycling worker" not in steady.stderr

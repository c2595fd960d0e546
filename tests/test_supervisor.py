"""The supervisor end to end: real worker processes, a real SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest

from tests.conftest import CONF, query, run_hpo, start_hpo, user_attrs, wait_for

REQUIRED_ATTRS = {"end_reason", "duration_s", "peak_rss_mib", "worker_pid", "device"}


def _states(db: Path) -> dict[str, int]:
    return dict(query(db, "select state, count(*) from trials group by state"))


def _running_with_progress(db: Path) -> list[int]:
    """Numbers of RUNNING trials that reported at least one epoch."""
    rows = query(
        db,
        "select distinct t.number from trials t join trial_intermediate_values v "
        "on v.trial_id = t.trial_id where t.state = 'RUNNING'",
    )
    return [number for (number,) in rows]


def test_study_reaches_n_trials_and_records_every_trial(
    tmp_path: Path, toy_args: list[str]
) -> None:
    result = run_hpo(tmp_path, *toy_args, "par=2", "study.n_trials=8")
    assert result.returncode == 0, result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    states = _states(db)
    assert "RUNNING" not in states
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 8
    pids = set()
    for (number,) in query(db, "select number from trials"):
        attrs = user_attrs(db, number)
        assert REQUIRED_ATTRS <= set(attrs), (number, attrs)
        assert attrs["end_reason"] in ("complete", "pruned")
        assert attrs["device"] == "cpu" and attrs["peak_rss_mib"] > 0
        pids.add(attrs["worker_pid"])
    assert len(pids) == 2, "both workers ran trials"
    assert "finished trials" in result.stdout and "best trial" in result.stdout
    assert query(db, "pragma journal_mode") == [("wal",)]


def test_n_trials_is_a_total_across_runs(tmp_path: Path, toy_args: list[str]) -> None:
    assert run_hpo(tmp_path, *toy_args, "study.n_trials=3").returncode == 0
    db = tmp_path / "_optuna" / "toy.db"
    again = run_hpo(tmp_path, *toy_args, "study.n_trials=3")
    assert again.returncode == 0
    assert "nothing to do" in again.stderr
    assert query(db, "select count(*) from trials") == [(3,)]
    more = run_hpo(tmp_path, *toy_args, "study.n_trials=5")
    assert more.returncode == 0, more.stderr
    assert query(db, "select count(*) from trials") == [(5,)]


def test_sigkilled_worker_fails_its_trial_and_is_replaced(
    tmp_path: Path, toy_args: list[str]
) -> None:
    proc = start_hpo(
        tmp_path, *toy_args, "par=2", "study.n_trials=6", "study.epoch_s=0.25", "pruner=none"
    )
    db = tmp_path / "_optuna" / "toy.db"
    try:
        number = wait_for(lambda: _running_with_progress(db), what="a running trial")[0]
        victim = user_attrs(db, number)["worker_pid"]
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    attrs = user_attrs(db, number)
    assert query(db, "select state from trials where number = ?", number) == [("FAIL",)]
    assert attrs["end_reason"] == "worker_died"
    assert "SIGKILL" in attrs["error"]
    states = _states(db)
    assert states.get("COMPLETE", 0) == 6 and "RUNNING" not in states
    later = [
        user_attrs(db, n)["worker_pid"]
        for (n,) in query(
            db, "select number from trials where number > ? and state = 'COMPLETE'", number
        )
    ]
    assert later and all(pid != victim for pid in later)
    assert len(set(later)) == 2, "the dead worker's slot was refilled"


def _stop_mid_study(
    tmp_path: Path, toy_args: list[str], sig: int, count: int = 1
) -> tuple[Path, int, str, list[int]]:
    proc = start_hpo(
        tmp_path, *toy_args, "par=2", "study.n_trials=30", "study.epoch_s=0.2", "pruner=none"
    )
    db = tmp_path / "_optuna" / "toy.db"
    try:
        wait_for(lambda: len(_running_with_progress(db)) == 2, what="two running trials")
        workers = [
            p.pid
            for p in psutil.Process(proc.pid).children()
            if "spawn_main" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
        for _ in range(count):
            proc.send_signal(sig)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return db, proc.returncode, out, workers


def test_sigterm_stops_now_and_leaves_nothing_running(tmp_path: Path, toy_args: list[str]) -> None:
    db, code, out, workers = _stop_mid_study(tmp_path, toy_args, signal.SIGTERM)
    assert code == 130, out
    assert "RUNNING" not in _states(db)
    stopped = query(db, "select number from trials where state = 'FAIL'")
    assert len(stopped) == 2
    assert {user_attrs(db, n)["end_reason"] for (n,) in stopped} == {"interrupted"}
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers
    )


def test_ctrl_c_once_finishes_running_trials(tmp_path: Path, toy_args: list[str]) -> None:
    db, code, out, _ = _stop_mid_study(tmp_path, toy_args, signal.SIGINT)
    assert code == 130, out
    assert "finishing running trials" in out
    states = _states(db)
    assert "RUNNING" not in states and "FAIL" not in states
    assert states["COMPLETE"] < 30


def test_ctrl_c_twice_stops_now(tmp_path: Path, toy_args: list[str]) -> None:
    db, code, out, _ = _stop_mid_study(tmp_path, toy_args, signal.SIGINT, count=2)
    assert code == 130, out
    assert "RUNNING" not in _states(db)
    reasons = {
        user_attrs(db, n)["end_reason"]
        for (n,) in query(db, "select number from trials where state = 'FAIL'")
    }
    assert reasons == {"interrupted"}


def test_par8_never_reports_a_locked_database(tmp_path: Path, toy_args: list[str]) -> None:
    result = run_hpo(
        tmp_path, *toy_args, "par=8", "study.n_trials=40", "study.epoch_s=0.002", timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stdout + result.stderr
    states = _states(tmp_path / "_optuna" / "toy.db")
    assert states.get("COMPLETE", 0) + states.get("PRUNED", 0) == 40
    assert "RUNNING" not in states


def test_objective_that_always_fails_aborts_the_study(tmp_path: Path, toy_args: list[str]) -> None:
    result = run_hpo(tmp_path, *toy_args, "study.error_rate=1.0", "max_failures_in_a_row=3")
    assert result.returncode == 1
    assert "3 trials failed in a row; last: ValueError: toy error injected" in result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    assert "RUNNING" not in _states(db)
    first = user_attrs(db, 0)
    assert first["end_reason"] == "error"
    assert first["error"].endswith("ValueError: toy error injected in trial 0")


def test_postgres_storage_runs_a_study(tmp_path: Path, toy_args: list[str]) -> None:
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("HPO_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("HPO_TEST_POSTGRES_URL not set")
    name = f"toy_{uuid.uuid4().hex[:8]}"
    env_args = [*toy_args, "storage=postgres", f"study.name={name}", "par=2", "study.n_trials=6"]
    old = os.environ.get("HPO_POSTGRES_URL")
    os.environ["HPO_POSTGRES_URL"] = url
    try:
        result = run_hpo(tmp_path, *env_args)
        assert result.returncode == 0, result.stderr
        study = optuna.load_study(study_name=name, storage=url)
        finished = [t for t in study.trials if t.state.is_finished()]
        assert len(finished) == 6 and all("end_reason" in t.user_attrs for t in finished)
        assert not list(tmp_path.glob("_optuna/*.db")), "no SQLite file beside PostgreSQL"
        optuna.delete_study(study_name=name, storage=url)
    finally:
        if old is None:
            os.environ.pop("HPO_POSTGRES_URL", None)
        else:
            os.environ["HPO_POSTGRES_URL"] = old


def test_supervisor_import_path_never_imports_torch() -> None:
    """DESIGN: heavy imports stay in the workers; the supervisor composes and runs without torch."""
    code = (
        "import sys; from hpo.config import Settings, compose; import hpo.cli, hpo.supervisor; "
        "from hpo.supervisor import Supervisor; "
        f"Supervisor(Settings.from_config(compose(['study=criteria'], {str(CONF)!r}))); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

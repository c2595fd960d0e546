"""Every failure kind end to end: real workers, a real SQLite file, injected faults."""

from __future__ import annotations

import datetime
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from hpo.sim.faults import Fault, draw_fault
from tests.conftest import query, run_hpo, start_hpo, user_attrs, wait_for

# A short study whose trials checkpoint after epoch 1 and meet their injected fault at epoch 2.
FAST = ["par=2", "study.n_trials=5", "study.epochs=4", "study.epoch_s=0.05", "pruner=none"]
ALL_INFRA = "faults.retry_on=[worker_died,cuda_error,timeout]"
REASONS = {
    "complete",
    "pruned",
    "oom",
    "cuda_error",
    "worker_died",
    "timeout",
    "error",
    "interrupted",
}


def _trials(db: Path) -> dict[int, tuple[str, dict]]:
    return {
        n: (state, user_attrs(db, n)) for n, state in query(db, "select number, state from trials")
    }


def _params(db: Path, number: int) -> dict[str, float]:
    rows = query(
        db,
        "select p.param_name, p.param_value from trial_params p join trials t "
        "on p.trial_id = t.trial_id where t.number = ?",
        number,
    )
    return dict(rows)


def _assert_settled(db: Path, finished: int) -> None:
    trials = _trials(db)
    states = [state for state, _ in trials.values()]
    assert "RUNNING" not in states and "WAITING" not in states
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == finished
    assert all(attrs.get("end_reason") in REASONS for _, attrs in trials.values()), trials


@pytest.mark.parametrize(
    ("knob", "fault", "reason", "retried"),
    [
        ("study.oom_rate", Fault.OOM, "oom", False),
        ("study.cuda_error_rate", Fault.CUDA_ERROR, "cuda_error", True),
        ("study.segfault_rate", Fault.SEGFAULT, "worker_died", True),
        ("study.hang_rate", Fault.HANG, "timeout", True),
    ],
)
def test_each_failure_kind_ends_its_trial_and_infra_failures_are_retried(
    tmp_path: Path, toy_args: list[str], knob: str, fault: Fault, reason: str, retried: bool
) -> None:
    rate = 0.4
    assert any(draw_fault(n, {fault: rate}) is fault for n in range(4)), "a fault in the first 4"
    extra = ["faults.trial_timeout_s=3", "study.hang_s=120", ALL_INFRA, "max_failures_in_a_row=9"]
    result = run_hpo(tmp_path, *toy_args, *FAST, f"{knob}={rate}", *extra)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    _assert_settled(db, 5)
    trials = _trials(db)
    failed = [n for n, (state, a) in trials.items() if a["end_reason"] == reason]
    assert failed and all(trials[n][0] == "FAIL" for n in failed)
    retries = {a["retry_of"]: n for n, (_, a) in trials.items() if "retry_of" in a}
    if not retried:
        assert not retries
        assert all("CUDA out of memory" in trials[n][1]["error"] for n in failed)
        return
    for number in failed:
        if trials[number][1].get("attempt", 1) > 2:
            continue  # its retries are exhausted (max_retries 2)
        retry = retries[number]
        assert _params(db, retry) == _params(db, number), "a retry keeps the parameters"
        attrs = trials[retry][1]
        assert attrs["attempt"] == trials[number][1].get("attempt", 1) + 1
        assert attrs["checkpoint_dir"] == trials[number][1]["checkpoint_dir"]
        assert attrs["resumed_from_epoch"] >= 1, "the retry resumed from the checkpoint"
    if reason in ("cuda_error", "timeout"):  # the worker is replaced, never reused
        for number in failed:
            pid = trials[number][1]["worker_pid"]
            later = [a["worker_pid"] for n, (_, a) in trials.items() if n > number + 2]
            assert pid not in later
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_oom_and_error_are_not_retried_even_when_asked(tmp_path: Path, toy_args: list[str]) -> None:
    result = run_hpo(tmp_path, *toy_args, "faults.retry_on=[oom]")
    assert result.returncode == 2
    assert "faults.retry_on may hold worker_died, cuda_error, timeout, got 'oom'" in result.stderr


def test_timeout_is_not_retried_unless_configured(tmp_path: Path, toy_args: list[str]) -> None:
    hang = ["study.hang_rate=0.4", "study.hang_s=120", "faults.trial_timeout_s=3"]
    result = run_hpo(tmp_path, *toy_args, *FAST, *hang)
    assert result.returncode == 0, result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    _assert_settled(db, 5)
    trials = _trials(db)
    assert any(a["end_reason"] == "timeout" for _, a in trials.values())
    assert not any("retry_of" in a for _, a in trials.values())


def test_workers_are_recycled_after_n_trials(tmp_path: Path, toy_args: list[str]) -> None:
    result = run_hpo(tmp_path, *toy_args, "par=1", "study.n_trials=5", "faults.recycle_after=2")
    assert result.returncode == 0, result.stderr
    db = tmp_path / "_optuna" / "toy.db"
    pids = [user_attrs(db, n)["worker_pid"] for n in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert "recycling worker" in result.stderr


def test_worker_death_is_detected_within_two_seconds(tmp_path: Path, toy_args: list[str]) -> None:
    args = ["par=2", "study.n_trials=4", "study.epochs=6", "study.epoch_s=0.3", "pruner=none"]
    proc = start_hpo(tmp_path, *toy_args, *args)
    db = tmp_path / "_optuna" / "toy.db"
    try:
        number = wait_for(lambda: _running_with_progress(db), what="a running trial")[0]
        os.kill(user_attrs(db, number)["worker_pid"], signal.SIGKILL)
        killed_at = datetime.datetime.now()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    [(state, completed)] = query(
        db, "select state, datetime_complete from trials where number = ?", number
    )
    assert state == "FAIL" and user_attrs(db, number)["end_reason"] == "worker_died"
    detect_s = (datetime.datetime.fromisoformat(completed) - killed_at).total_seconds()
    assert detect_s < 2.0, f"worker death noticed after {detect_s:.2f} s"
    retry = query(db, "select count(*) from trial_user_attributes where key = 'retry_of'")
    assert retry == [(1,)]


def _running_with_progress(db: Path) -> list[int]:
    rows = query(
        db,
        "select distinct t.number from trials t join trial_intermediate_values v "
        "on v.trial_id = t.trial_id where t.state = 'RUNNING'",
    )
    return [number for (number,) in rows]


def _workers_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children() if "spawn_main" in " ".join(p.cmdline())]


def test_killed_supervisor_is_resumed_by_running_the_same_command(
    tmp_path: Path, toy_args: list[str]
) -> None:
    args = [*toy_args, "par=2", "study.n_trials=8", "study.epoch_s=0.2", "pruner=none"]
    proc = start_hpo(tmp_path, *args)
    db = tmp_path / "_optuna" / "toy.db"
    try:
        wait_for(lambda: len(_running_with_progress(db)) == 2, what="two running trials")
        workers = _workers_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    orphans = [n for (n,) in query(db, "select number from trials where state = 'RUNNING'")]
    assert len(orphans) == 2
    wait_for(lambda: not any(psutil.pid_exists(p) for p in workers), 5, "workers to exit")
    start = time.monotonic()
    again = run_hpo(tmp_path, *args)
    elapsed = time.monotonic() - start
    assert again.returncode == 0, again.stderr
    assert elapsed < 30, "no waiting for the 60 s heartbeat grace period"
    _assert_settled(db, 8)
    trials = _trials(db)
    retries = {a["retry_of"]: n for n, (_, a) in trials.items() if "retry_of" in a}
    for number in orphans:
        state, attrs = trials[number]
        assert state == "FAIL" and attrs["end_reason"] == "worker_died"
        assert "its supervisor" in attrs["error"] and "is gone" in attrs["error"]
        assert trials[retries[number]][1]["resumed_from_epoch"] >= 1
    assert "reaped trial" in again.stderr

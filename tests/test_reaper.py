"""Liveness of RUNNING trials: heartbeats, orphans of a dead supervisor, other nodes' trials."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hpo.storage import StudyStore, open_storage, prepare_storage
from hpo.supervisor.liveness import Heartbeats, Liveness, Reaper, node_id, owner_attrs
from tests.conftest import query

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")

DIST = {"x": optuna.distributions.FloatDistribution(0, 1)}


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    url = f"sqlite:///{tmp_path / 'reap.db'}"
    prepare_storage(url)
    storage = open_storage(url, 30, heartbeat_interval_s=1, grace_period_s=60)
    return optuna.create_study(study_name="reap", storage=storage)


def _running(study: optuna.Study, **attrs: object) -> optuna.Trial:
    trial = study.ask(DIST)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def _dead_pid() -> int:
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return int(proc.stdout)


def _age_heartbeats(db: Path, seconds: int) -> None:
    query(db, f"update trial_heartbeats set heartbeat = datetime(heartbeat, '-{seconds} seconds')")


def _store(study: optuna.Study) -> StudyStore:
    return StudyStore(study._storage, study.study_name)  # type: ignore[attr-defined]


def _found(study: optuna.Study, exclude: set[int] | None = None) -> dict[int, Liveness]:
    reaper = Reaper(_store(study), grace_period_s=60, node_name="here")
    return {tid: decision for tid, decision, _ in reaper.find(exclude or set())}


def test_orphan_of_a_dead_supervisor_on_this_node_is_reaped_at_once(study: optuna.Study) -> None:
    dead = _running(study, node_id=node_id(), supervisor_pid=_dead_pid(), host="here")
    Heartbeats(_store(study), 0).beat([dead._trial_id])
    assert _found(study) == {dead._trial_id: Liveness.ORPHANED}


def test_our_own_pid_on_a_trial_older_than_us_means_a_previous_supervisor(
    study: optuna.Study, tmp_path: Path
) -> None:
    """A trial with this process's pid that started after it did is ours (one of our workers
    may be asking it right now); one that started before was a previous supervisor's."""
    import psutil

    trial = _running(study, **owner_attrs("here"))
    assert _found(study) == {}
    age = int(time.time() - psutil.Process().create_time()) + 60
    _age_trials(tmp_path / "reap.db", age)
    assert _found(study) == {trial._trial_id: Liveness.ORPHANED}
    assert _found(study, exclude={trial._trial_id}) == {}


def test_a_trial_whose_worker_died_while_asking_for_it_is_reaped_at_once(
    study: optuna.Study,
) -> None:
    """This supervisor's trial that it does not run (not excluded): a worker asked for it and
    died before answering. Another supervisor's trial, or a live worker's, is left alone."""
    me = {"node_id": "here", "pid_namespace": node_id(), "supervisor_pid": os.getpid()}
    lost = _running(study, **me, worker_pid=_dead_pid())
    asking = _running(study, **me, worker_pid=os.getpid())  # still asking: its answer is due
    sibling = _running(study, **{**me, "supervisor_pid": os.getppid()}, worker_pid=_dead_pid())
    found = _found(study)
    assert found == {lost._trial_id: Liveness.ASKED}
    assert asking._trial_id not in found and sibling._trial_id not in found


def test_live_supervisor_on_this_node_is_left_alone(study: optuna.Study) -> None:
    _running(study, node_id=node_id(), supervisor_pid=os.getppid(), host="here")
    assert _found(study) == {}


def test_other_nodes_trials_wait_for_the_grace_period(study: optuna.Study, tmp_path: Path) -> None:
    other = _running(study, node_id="another-boot/123", supervisor_pid=_dead_pid(), host="b")
    Heartbeats(_store(study), 0).beat([other._trial_id])
    assert _found(study) == {}, "a fresh heartbeat: alive, whatever its pid says here"
    _age_heartbeats(tmp_path / "reap.db", 120)
    assert _found(study) == {other._trial_id: Liveness.STALE}


def _age_trials(db: Path, seconds: int) -> None:
    query(db, f"update trials set datetime_start = datetime(datetime_start, '-{seconds} seconds')")


def test_other_nodes_trial_that_never_beat_is_stale_after_the_grace_period(
    study: optuna.Study, tmp_path: Path
) -> None:
    trial = _running(study, node_id="another-boot/123", supervisor_pid=1, host="b")
    _age_trials(tmp_path / "reap.db", 30)
    assert _found(study) == {}
    _age_trials(tmp_path / "reap.db", 60)
    assert _found(study) == {trial._trial_id: Liveness.STALE}


def test_ownerless_trial_is_stale_after_a_few_seconds(study: optuna.Study, tmp_path: Path) -> None:
    trial = _running(study)  # no owner, no heartbeat: its supervisor died right after ask
    assert _found(study) == {}, "a supervisor may be between ask and launch right now"
    _age_trials(tmp_path / "reap.db", 10)
    assert _found(study) == {trial._trial_id: Liveness.STALE}


def test_heartbeats_respect_the_interval(
    study: optuna.Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first beat is one interval after the trial is first seen (its start stands for it
    until then: a short trial costs no write), then one per interval."""
    import hpo.supervisor.liveness as liveness

    clock = [1000.0]
    monkeypatch.setattr(liveness.time, "monotonic", lambda: clock[0])
    beats = Heartbeats(_store(study), 10)
    trial = _running(study)
    beats.beat([trial._trial_id])
    assert query(tmp_path / "reap.db", "select * from trial_heartbeats") == []
    assert _found(study) == {}, "a trial that never beat is alive within the grace period"
    clock[0] += 10
    beats.beat([trial._trial_id])
    first = query(tmp_path / "reap.db", "select heartbeat from trial_heartbeats")
    assert len(first) == 1
    _age_heartbeats(tmp_path / "reap.db", 10)
    clock[0] += 5
    beats.beat([trial._trial_id])  # within the interval: no write
    assert query(tmp_path / "reap.db", "select heartbeat from trial_heartbeats") != first
    clock[0] += 5
    beats.beat([trial._trial_id])
    assert query(tmp_path / "reap.db", "select heartbeat from trial_heartbeats") != [first[0]]
    assert len(query(tmp_path / "reap.db", "select * from trial_heartbeats")) == 1


def test_another_node_on_this_machine_waits_for_the_grace_period(study: optuna.Study) -> None:
    """Nodes are named: a dead supervisor of node 'there' (same machine, as in a test of
    several nodes) is another node's, reaped only after the grace period."""
    attrs = {**owner_attrs("there"), "supervisor_pid": _dead_pid()}
    trial = _running(study, **attrs)
    Heartbeats(_store(study), 0).beat([trial._trial_id])  # interval 0: it beats at once
    assert _found(study) == {}


def test_a_stopping_supervisor_interrupts_what_its_workers_were_asking_for(
    study: optuna.Study,
) -> None:
    """Stopped, a supervisor records the trials its stopped workers had asked for as
    interrupted (they never started); a dead supervisor's trial is still reaped
    (``worker_died``), and so is an asked trial whose worker died while the run goes on."""
    from hpo.contract import EndReason
    from hpo.supervisor.checkpoints import CheckpointStore
    from hpo.supervisor.recorder import RunSummary, TrialRecorder
    from hpo.supervisor.retry import RetryPolicy

    me = {"node_id": "here", "pid_namespace": node_id(), "supervisor_pid": os.getpid()}
    orphan = _running(study, node_id=node_id(), supervisor_pid=_dead_pid(), host="here")
    asked = _running(study, **me, worker_pid=_dead_pid())
    later = _running(study, **me, worker_pid=_dead_pid())
    reaper, store = Reaper(_store(study), grace_period_s=60, node_name="here"), _store(study)
    recorder = TrialRecorder(
        study,
        store,
        RunSummary("reap", "sqlite://", 10, 0, 0.0),
        RetryPolicy(frozenset(), 0),
        CheckpointStore(None),
        5,
    )
    found = [f for f in reaper.find(set()) if f[0] != later._trial_id]
    assert {tid: d for tid, d, _ in found} == {
        orphan._trial_id: Liveness.ORPHANED,
        asked._trial_id: Liveness.ASKED,
    }
    recorder.reap_all(found, "stopped by the user")
    recorder.reap_all(reaper.find(set()))  # the run goes on: reaped
    ended = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert ended[asked.number].user_attrs["end_reason"] == EndReason.INTERRUPTED.value
    assert ended[orphan.number].user_attrs["end_reason"] == EndReason.WORKER_DIED.value
    assert ended[later.number].user_attrs["end_reason"] == EndReason.WORKER_DIED.value
    assert all(t.state.is_finished() for t in ended.values())

"""One study, several supervisors (nodes): exactly n_trials, nodes visible, stoppable, reaped.

Nodes are simulated on this machine with ``--node-id``; PostgreSQL comes from
``HPO_TEST_POSTGRES_URL`` (set by .ci/run), each test on a study name of its own.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna

from tests.conftest import CONF, hpo_cmd, pg_url, start_hpo, wait_for

FAST = ["study=toy", "study.epoch_s=0.03", "sampler=random", "pruner=none"]
LIVENESS = ["faults.heartbeat_interval_s=1", "faults.grace_period_s=4"]


def _node(cwd: Path, name: str, *args: str) -> subprocess.Popen[str]:
    return start_hpo(cwd, "--node-id", name, *args)


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[str]:
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out)
    return outputs


def _states(storage: str, name: str) -> dict[str, int]:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not created yet
        return {}
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _finished(storage: str, name: str) -> int:
    states = _states(storage, name)
    return states.get("COMPLETE", 0) + states.get("PRUNED", 0)


def test_two_supervisors_on_one_sqlite_study_finish_exactly_n_trials(tmp_path: Path) -> None:
    args = [*FAST, "study.n_trials=24", "par=2", f"storage.dir={tmp_path}"]
    procs = [_node(tmp_path, name, *args) for name in ("a", "b")]
    outs = _finish(procs)
    assert all(p.returncode == 0 for p in procs), outs
    storage = f"sqlite:///{tmp_path / 'toy.db'}"
    states = _states(storage, "toy")
    assert _finished(storage, "toy") == 24 and states.get("RUNNING", 0) == 0, states
    assert "node 'a' joined" in outs[0] and "node 'b' joined" in outs[1]


def test_three_nodes_on_postgresql_exactly_90_even_when_one_is_killed(tmp_path: Path) -> None:
    url = pg_url()
    name = f"multi-{uuid.uuid4().hex[:8]}"
    args = [*FAST, "study.n_trials=90", "par=2", f"storage.url={url}", f"study.name={name}"]
    procs = [_node(tmp_path, f"n{i}", *args, *LIVENESS) for i in (1, 2, 3)]
    try:
        wait_for(lambda: _finished(url, name) >= 20, timeout=120, what="20 finished trials")
        status = subprocess.run(
            [*hpo_cmd()[:3], "status", "--once", "--config-dir", str(CONF), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        for node in ("n1", "n2", "n3"):
            assert node in status.stdout, status.stdout
        assert "alive" in status.stdout
        procs[2].send_signal(signal.SIGKILL)  # node n3 dies with its running trials
        procs[2].wait(30)
        outs = _finish(procs[:2])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(p.returncode == 0 for p in procs[:2]), outs
    states = _states(url, name)
    assert _finished(url, name) == 90, states
    assert states.get("RUNNING", 0) == 0 and states.get("WAITING", 0) == 0, states
    if states.get("FAIL", 0):  # n3's running trials: reaped by the others after the grace period
        assert any("reaped trial" in out for out in outs), outs


def test_hpo_stop_from_another_terminal_drains_every_node(tmp_path: Path) -> None:
    url = pg_url()
    name = f"stop-{uuid.uuid4().hex[:8]}"
    args = [*FAST, "study.n_trials=5000", "par=1", f"storage.url={url}", f"study.name={name}"]
    procs = [_node(tmp_path, f"s{i}", *args, *LIVENESS) for i in (1, 2, 3)]
    try:
        wait_for(lambda: _finished(url, name) >= 6, timeout=120, what="a few trials")
        started = time.monotonic()
        stop = subprocess.run(
            [*hpo_cmd()[:3], "stop", "--config-dir", str(CONF), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stop.returncode == 0 and "stop (drain) requested" in stop.stdout, stop.stderr
        outs = _finish(procs, timeout=60)
        assert time.monotonic() - started < 30
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all("stop requested" in out for out in outs), outs
    states = _states(url, name)
    assert states.get("RUNNING", 0) == 0 and _finished(url, name) < 5000, states


def test_a_node_that_would_pass_the_servers_connection_cap_says_so() -> None:
    from hpo.storage import open_storage
    from hpo.storage.connections import check_capacity, planned

    url = pg_url()
    storage = open_storage(url, 10)
    assert check_capacity(storage, url, 1) is None
    warning = check_capacity(storage, url, 200)
    assert warning is not None and f"up to {planned(200)} connections" in warning
    assert "max_connections=" in warning
    assert check_capacity(storage, "sqlite:///x.db", 200) is None

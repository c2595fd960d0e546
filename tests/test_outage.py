"""Storage outages: a PostgreSQL restart is ridden out, a full disk stops the run cleanly.

Real processes, a real PostgreSQL server of the test's own (initdb'd in a temp dir, on its own
port, a password-protected role) and real SQLite files on a tiny tmpfs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy.exc as sa
from optuna.exceptions import StorageInternalError

from bench.chaos import PgServer, fill, pg_bin, tmpfs
from hpo.storage.outage import Failure, OutageGuard, StorageOutage, diagnose
from tests.conftest import query, run_hpo, start_hpo, wait_for


def _pg_states(url: str, study: str) -> dict[int, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    sql = (
        "select t.number, t.state from trials t join studies s on s.study_id = t.study_id "
        "where s.study_name = :s"
    )
    try:
        with engine.connect() as conn:
            return {int(n): str(s) for n, s in conn.execute(text(sql), {"s": study})}
    except sa.SQLAlchemyError:  # no tables yet
        return {}
    finally:
        engine.dispose()


def _finished(states: dict[int, str]) -> int:
    return sum(s.endswith(("COMPLETE", "PRUNED")) for s in states.values())


# --- classification and the guard ---------------------------------------------------------------


def _wrapped(message: str, kind: type[sa.DBAPIError] = sa.OperationalError) -> Exception:
    """What Optuna raises: its generic commit error, caused by SQLAlchemy's, caused by the
    DBAPI's."""
    cause = kind("INSERT …", {}, sqlite3.OperationalError(message))
    try:
        try:
            raise cause
        except sa.SQLAlchemyError as e:
            raise StorageInternalError("An exception is raised during the commit.") from e
    except StorageInternalError as outer:
        return outer


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("database is locked", Failure.TRANSIENT),
        (
            'connection to server at "127.0.0.1", port 5 failed: Connection refused',
            Failure.TRANSIENT,
        ),
        ("server closed the connection unexpectedly", Failure.TRANSIENT),
        ("terminating connection due to administrator command", Failure.TRANSIENT),
        ("FATAL:  the database system is starting up", Failure.TRANSIENT),
        ("database or disk is full", Failure.PERMANENT),
        ("attempt to write a readonly database", Failure.PERMANENT),
        ("database disk image is malformed", Failure.PERMANENT),
        ('FATAL:  password authentication failed for user "hpo"', Failure.PERMANENT),
        ("some new operational error", Failure.PERMANENT),
    ],
)
def test_diagnose_unwraps_optunas_commit_error(message: str, kind: Failure) -> None:
    diagnosis = diagnose(_wrapped(message))
    assert diagnosis is not None
    assert diagnosis.kind is kind
    assert diagnosis.cause == message


def test_every_call_optunas_cache_makes_is_guarded() -> None:
    """Optuna's _CachedStorage calls private methods of its backend: each must be retried."""
    import inspect
    import re

    from optuna.storages._cached_storage import _CachedStorage

    from hpo.storage.resilient import PRIVATE_GUARDED

    called = set(re.findall(r"_backend\.(\w+)", inspect.getsource(_CachedStorage)))
    assert called
    assert {n for n in called if n.startswith("_")} <= set(PRIVATE_GUARDED)


def test_not_a_storage_failure_passes_through() -> None:
    assert diagnose(KeyError("no study")) is None
    assert diagnose(_wrapped("UNIQUE constraint failed", sa.IntegrityError)) is None


def test_guard_rides_out_a_short_outage(caplog: pytest.LogCaptureFixture) -> None:
    guard = OutageGuard("db", outage_s=10, secret=None, loud=True)
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise _wrapped("server closed the connection unexpectedly")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="hpo.storage.outage"):
        assert guard.call(flaky) == "ok"
        assert guard.call(lambda: 1) == 1
    assert len(calls) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one when it starts, one when it ends
    assert "unreachable (server closed the connection unexpectedly)" in lines[0]
    assert "is back after" in lines[1]


def test_guard_gives_up_past_the_limit_and_masks_the_password() -> None:
    guard = OutageGuard("postgresql://u:***@h/db", outage_s=0.5, secret="s3cret", loud=False)

    def down() -> None:
        raise _wrapped('password "s3cret" connection refused')

    start = time.monotonic()
    with pytest.raises(StorageOutage, match=r"unreachable for \d+ s \(storage.outage_s=0.5\)") as e:
        guard.call(down)
    assert 0.5 <= time.monotonic() - start < 5
    assert "s3cret" not in str(e.value) and "***" in str(e.value)
    start = time.monotonic()
    with pytest.raises(StorageOutage):  # given up: later calls are tried once
        guard.call(down)
    assert time.monotonic() - start < 0.5


def test_guard_stops_at_once_on_a_permanent_error() -> None:
    guard = OutageGuard("x.db", outage_s=60, secret=None, loud=True)
    calls = []

    def full() -> None:
        calls.append(1)
        raise _wrapped("database or disk is full")

    with pytest.raises(StorageOutage, match=r"^storage x.db failed: database or disk is full$"):
        guard.call(full)
    assert calls == [1]


# --- real processes -------------------------------------------------------------------------------


def test_postgres_restart_of_20_s_is_ridden_out(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_POSTGRES_URL", pg.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["study=toy", "study.name=outage", "storage=postgres", "study.n_trials=8", "par=2",
            "study.epochs=6", "study.epoch_s=0.25"]  # fmt: skip
    proc = start_hpo(tmp_path, *args)
    wait_for(lambda: _finished(_pg_states(pg.url, "outage")) >= 2, 120, "two finished trials")
    running = [n for n, s in _pg_states(pg.url, "outage").items() if s.endswith("RUNNING")]
    pg.stop()
    time.sleep(20)
    pg.start()
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    states = _pg_states(pg.url, "outage")
    assert _finished(states) == 8, out[-3000:]
    assert not [n for n, s in states.items() if s.endswith("RUNNING")]
    assert all(states[n].endswith(("COMPLETE", "PRUNED")) for n in running)  # none lost
    assert "worker_died" not in out and "Traceback" not in out
    assert out.count("unreachable (") == 1 and out.count("is back after") == 1, out[-3000:]
    assert pg.password not in out


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_stops_cleanly_and_the_rerun_finishes(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    db = disk / "_optuna" / "full.db"
    args = ["study=toy", "study.name=full", f"storage.dir={disk / '_optuna'}",
            "study.n_trials=8", "par=2", "study.epochs=6", "study.epoch_s=0.2",
            "faults.checkpoints=false"]  # fmt: skip
    with tmpfs(disk, "4m"):
        proc = start_hpo(tmp_path, *args)
        wait_for(lambda: query(db, "select count(*) from trials where state='COMPLETE'")[0][0] >= 2,
                 120, "two finished trials")  # fmt: skip
        ballast = fill(disk)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("hpo: error:")]
        assert errors == [f"hpo: error: storage {db} failed: database or disk is full"], out
        assert "Traceback" not in out and "exceeding max length" not in out, out[-3000:]
        ballast.unlink()
        rerun = run_hpo(tmp_path, *args, timeout=180)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        states = dict(query(db, "select number, state from trials"))
    assert "RUNNING" not in states.values()
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 8


def test_pg_binaries_present_here() -> None:
    """CI and this box have PostgreSQL: the server tests must not skip silently there."""
    if os.environ.get("CI") or Path("/usr/lib/postgresql").is_dir():
        assert pg_bin() is not None

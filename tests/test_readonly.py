"""The look commands never write: read-only SQLite (no ``-wal``/``-shm``), a storage that
refuses writes, a dashboard that refuses a delete unless ``--allow-writes``, a read-only
PostgreSQL session."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import shutil
import sqlite3
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.storages import BaseStorage

from hpo.look import queries
from hpo.look.dashboard import DashboardServer, forbidden
from hpo.look.db import StudyDB, StudyRef
from hpo.storage.readonly import (
    ReadOnlyConnection,
    ReadOnlyStorage,
    StorageReadOnlyError,
    connect_sqlite,
    open_optuna_storage,
    readonly_engine_args,
)
from tests.conftest import run_hpo
from tests.look import look_cmd, make_toy_study, run_look
from tests.test_dashboard import start_dashboard, stop

READS = {"remove_session", "check_trial_is_updatable"}  # the BaseStorage reads not named get_*


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``directory`` with its size and mtime (ns)."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="module")
def toy_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_study(tmp_path_factory.mktemp("readonly"))


def study_args(db: Path) -> list[str]:
    return ["study=toy", f"storage.dir={db.parent}"]


@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["stats", "--json", "--vram-threshold-mib", "1"],
        ["status", "--once"],
        ["report", "--out", "rep"],
    ],
)
def test_look_commands_leave_the_study_directory_unchanged(
    toy_db: Path, tmp_path: Path, command: list[str]
) -> None:
    before = listing(toy_db.parent.parent)
    result = run_look(tmp_path, *command, *study_args(toy_db))
    assert result.returncode == 0, result.stderr
    assert listing(toy_db.parent.parent) == before  # no -wal, -shm, nothing touched
    made = {p.name for p in tmp_path.iterdir()}
    assert made == ({"rep"} if command[0] == "report" else set())


def test_sqlite_is_immutable_when_idle_and_mode_ro_beside_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with sqlite3.connect(db) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("create table t (x)")
        setup.execute("insert into t values (1)")
    setup.close()
    idle = connect_sqlite(db, 5)
    assert isinstance(idle, ReadOnlyConnection) and idle.uri.endswith("?immutable=1")
    assert idle.execute("select x from t").fetchall() == [(1,)]
    with pytest.raises(sqlite3.OperationalError, match="readonly|query_only"):
        idle.execute("insert into t values (9)")
    idle.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db"]

    writer = sqlite3.connect(db)  # a running study: its -wal holds a commit not checkpointed
    writer.execute("insert into t values (2)")
    writer.commit()
    try:
        reader = connect_sqlite(db, 5)
        assert reader.uri.endswith("?mode=ro")
        assert reader.execute("select x from t order by x").fetchall() == [(1,), (2,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly|query_only"):
            reader.execute("insert into t values (9)")
        reader.close()
    finally:
        writer.close()  # the last connection: the writer removes its -wal and -shm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db"]


def test_sqlite_uri_escapes_the_path(tmp_path: Path) -> None:
    odd = tmp_path / "a dir?#%"
    odd.mkdir()
    db = odd / "s.db"
    with sqlite3.connect(db) as setup:
        setup.execute("create table t (x)")
    setup.close()
    conn = connect_sqlite(db, 5)
    assert conn.execute("select count(*) from t").fetchone() == (0,)
    conn.close()
    assert [p.name for p in odd.iterdir()] == ["s.db"]


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[list[str]]:
    """A read-only ``directory``, and the command prefix that sees it so.

    Root ignores permission bits, so as root the command runs in its own mount namespace with
    ``directory`` bind-mounted read-only; other users get ``chmod -w`` (undone afterwards).
    """
    if os.geteuid() != 0:
        files = [directory, *directory.iterdir()]
        modes = {p: p.stat().st_mode for p in files}
        for p in files:
            p.chmod(modes[p] & ~0o222)
        try:
            yield []
        finally:
            for p in files:
                p.chmod(modes[p])
        return
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && shift && exec "$@"'
    prefix = ["unshare", "--mount", "sh", "-c", script, str(directory), "--"]
    probe = subprocess.run([*prefix, "touch", str(directory / "probe")], capture_output=True)
    if shutil.which("unshare") is None or "Read-only file system" not in probe.stderr.decode():
        pytest.skip(f"no read-only bind mount here: {probe.stderr.decode().strip()}")
    yield prefix


@pytest.mark.parametrize("writer", ["none", "live", "wal-only"])
def test_stats_answers_from_a_read_only_directory(
    toy_db: Path, tmp_path: Path, writer: str
) -> None:
    """An archived study (read-only directory) reads immutable; beside a live writer's -wal and
    -shm it reads mode=ro; a -wal without its -shm (that mode=ro cannot create) immutable."""
    store = tmp_path / "_optuna"
    store.mkdir()
    source = tmp_path / "toy.db"
    shutil.copy(toy_db, source if writer == "wal-only" else store / "toy.db")
    conn = None
    if writer != "none":  # a writer with a commit still in its -wal
        conn = sqlite3.connect(source if writer == "wal-only" else store / "toy.db")
        conn.execute("update studies set study_name = study_name")
        conn.commit()
    if writer == "wal-only":
        for name in ("toy.db", "toy.db-wal"):
            shutil.copy(tmp_path / name, store / name)
    try:
        before = listing(store)
        with read_only(store) as prefix:
            result = subprocess.run(
                [*prefix, *look_cmd("stats", "--json", "study=toy", f"storage.dir={store}")],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state_counts"]
        assert listing(store) == before
    finally:
        if conn is not None:
            conn.close()


def test_status_of_a_simulated_study_writes_nothing_to_its_ledger(tmp_path: Path) -> None:
    store = tmp_path / "_optuna"
    args = ["study=simulated", f"storage.dir={store}", "study.n_trials=4", "study.epochs=3"]
    result = run_hpo(tmp_path, *args, "par=2")
    assert result.returncode == 0, result.stdout + result.stderr
    ledger = store / "simulated" / "sim"
    assert (ledger / "sim0.json").is_file()
    before = listing(tmp_path)
    contents = {p.name: p.read_bytes() for p in ledger.iterdir()}
    status = run_look(tmp_path, "status", "--once", *args)
    assert status.returncode == 0, status.stderr
    assert "sim:0" in status.stdout
    assert listing(tmp_path) == before
    assert {p.name: p.read_bytes() for p in ledger.iterdir()} == contents
    shutil.rmtree(ledger)  # and a ledger that is gone is not created again
    assert run_look(tmp_path, "status", "--once", *args).returncode == 0
    assert not ledger.exists()


def write_methods() -> list[str]:
    """Every public method of Optuna's BaseStorage that is not a read."""
    return sorted(
        name
        for name, value in vars(BaseStorage).items()
        if callable(value)
        and not name.startswith("_")
        and not name.startswith("get_")
        and name not in READS
    )


def test_every_write_method_of_base_storage_is_known() -> None:
    """A write method a newer Optuna adds shows up here (and is refused: see below)."""
    assert set(write_methods()) >= {
        "create_new_study",
        "delete_study",
        "set_study_user_attr",
        "set_study_system_attr",
        "create_new_trial",
        "set_trial_param",
        "set_trial_state_values",
        "set_trial_intermediate_value",
        "set_trial_user_attr",
        "set_trial_system_attr",
    }


@pytest.mark.parametrize("method", write_methods())
def test_read_only_storage_refuses_every_write(toy_db: Path, method: str) -> None:
    before = listing(toy_db.parent)
    storage = open_optuna_storage(f"sqlite:///{toy_db}", 5)
    assert isinstance(storage, ReadOnlyStorage)
    n_args = len(inspect.signature(getattr(BaseStorage, method)).parameters) - 1
    with pytest.raises(StorageReadOnlyError, match=f"{method} refused: .* read-only"):
        getattr(storage, method)(*[0] * n_args)
    assert listing(toy_db.parent) == before


def test_read_only_storage_reads_and_refuses_through_optuna(toy_db: Path) -> None:
    storage = open_optuna_storage(f"sqlite:///{toy_db}", 5)
    study = optuna.load_study(study_name="toy", storage=storage)
    with StudyDB(StudyRef("toy", f"sqlite:///{toy_db}")) as db:
        n_trials = db.rows("SELECT COUNT(*) AS n FROM trials")[0]["n"]
    assert len(study.trials) == n_trials >= 16 and study.best_trial.number >= 0
    assert storage.get_current_version()  # RDBStorage's own reads pass through
    for write in (
        lambda: study.set_user_attr("x", 1),
        study.ask,
        lambda: optuna.delete_study(study_name="toy", storage=storage),
        lambda: optuna.create_study(study_name="other", storage=storage),
        storage.upgrade,  # RDBStorage's own writes are refused too
    ):
        with pytest.raises(StorageReadOnlyError):
            write()
    assert not hasattr(storage, "_backend")  # nothing private of the storage is reachable
    with StudyDB(StudyRef("toy", f"sqlite:///{toy_db}")) as db:
        assert db.rows("SELECT COUNT(*) AS n FROM trials")[0]["n"] == n_trials


def http(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_dashboard_refuses_writes_by_default(toy_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "_optuna" / "toy.db"
    db.parent.mkdir()
    shutil.copy(toy_db, db)
    before = listing(db.parent)
    server = DashboardServer(StudyRef("toy", f"sqlite:///{db}"), port=0)
    server.start_in_thread()
    api = f"http://127.0.0.1:{server.port}/api/studies"
    try:
        status, body = http("DELETE", f"{api}/{server.study_id}")
        assert status == 403 and "--allow-writes" in body["reason"], body
        assert http("POST", f"{api}/{server.study_id}/rename", {"study_name": "x"})[0] == 403
        created = http("POST", api, {"study_name": "new", "directions": ["minimize"]})
        assert created[0] == 403, created
        assert http("GET", f"{api}/{server.study_id}")[0] == 200
    finally:
        server.shutdown()
    assert listing(db.parent) == before
    with StudyDB(StudyRef("toy", f"sqlite:///{db}")):
        pass  # the study is still there


def test_dashboard_app_answers_a_write_its_storage_refused_with_403(toy_db: Path) -> None:
    """Past the method guard, the storage itself refuses, and optuna-dashboard says why."""
    from optuna_dashboard import wsgi

    url = f"sqlite:///{toy_db}"
    with StudyDB(StudyRef("toy", url)) as db:
        study_id = db.rows(queries.STUDY_ID)[0]["study_id"]
    app = wsgi(open_optuna_storage(url, 5, refusal=forbidden))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "DELETE",
        "PATH_INFO": f"/api/studies/{study_id}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "wsgi.input": io.BytesIO(b"{}"),
    }
    setup_testing_defaults(environ)
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("403"), (statuses, body)
    reason = json.loads(body)["reason"]
    assert "delete_study refused" in reason and "--allow-writes" in reason


def test_dashboard_allow_writes_lets_the_browser_delete(toy_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "_optuna" / "toy.db"
    db.parent.mkdir()
    shutil.copy(toy_db, db)
    proc, url = start_dashboard(tmp_path, "--allow-writes", *study_args(db))
    try:
        status, _ = http("DELETE", url.replace("/dashboard/studies/", "/api/studies/"))
    finally:
        code, out = stop(proc)
    assert code == 0
    assert status == 204
    assert "--allow-writes: the browser can change and delete the study" in out
    result = run_look(tmp_path, "stats", *study_args(db))
    assert result.returncode == 2 and "no study 'toy'" in result.stderr


def test_postgres_session_is_read_only(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    name = f"ro-{uuid.uuid4().hex[:8]}"
    writable = optuna.create_study(study_name=name, storage=postgres_url)
    writable.enqueue_trial({"x": 1.0})
    try:
        engine_url, kwargs = readonly_engine_args(postgres_url, 5)
        engine = create_engine(engine_url, **kwargs)
        with engine.connect() as conn, pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(text("INSERT INTO studies (study_name) VALUES (:n)"), {"n": f"{name}-x"})
        engine.dispose()
        storage = open_optuna_storage(postgres_url, 5)
        assert isinstance(storage, ReadOnlyStorage)
        study_id = storage.get_study_id_from_name(name)
        assert len(storage.get_all_trials(study_id)) == 1
        with pytest.raises(optuna.exceptions.StorageInternalError) as refused:  # past the wrapper
            storage.backend.set_study_user_attr(study_id, "x", 1)
        assert "read-only transaction" in str(refused.value.__cause__)
        with StudyDB(StudyRef(name, postgres_url)) as db:
            assert db.rows("SELECT COUNT(*) AS n FROM studies WHERE study_name = :study")
    finally:
        optuna.delete_study(study_name=name, storage=postgres_url)

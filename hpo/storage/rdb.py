"""Opening the study's storage: Optuna's RDB schema on an SQLite file (WAL) or any SQLAlchemy
URL, created and prepared by the supervisor."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from hpo.errors import ConfigError
from hpo.storage.files import ask_lock_path, flocked, sqlite_path

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


def display_url(url: str) -> str:
    """The storage as people are shown it: an SQLite file's absolute path, any other URL with
    its password masked (``postgresql://user:***@host/db``)."""
    path = sqlite_path(url)
    if path is not None:
        return str(path.resolve())
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show nothing of it that may be secret
        return "<unparseable storage URL>"


def check_writable(url: str) -> None:
    """For an SQLite study: its directory is a directory (or can be made one) on a writable
    file system, else a ConfigError naming it (before any process starts or file is written)."""
    import os

    path = sqlite_path(url)
    if path is None:
        return
    directory = path.resolve().parent
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"storage directory {directory}: {existing} is a file, not a directory")
    import tempfile

    try:  # a probe that leaves nothing behind (root passes access checks on /proc and co.)
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        raise ConfigError(
            f"storage directory {directory}: cannot write in {existing}: {e.strerror}"
        ) from e
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"storage {path} is not writable (the look commands can read it)")


def storage_exists(url: str) -> bool:
    """Whether opening the storage would find existing data (always assumed for servers)."""
    path = sqlite_path(url)
    return path is None or path.is_file()


def prepare_storage(url: str, busy_timeout_s: float = 60.0) -> None:
    """Create the SQLite file's directory and switch the file to WAL mode.

    WAL lets readers (workers checking the pruner, ``hpo status``) run while one writer
    commits; the mode is stored in the file, so every later connection inherits it. The
    switch waits up to ``busy_timeout_s`` for a supervisor started at the same moment that
    is creating the tables (sqlite3's default of 5 s ran out on a loaded machine).
    """
    path = sqlite_path(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=busy_timeout_s) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise ConfigError(f"cannot switch {path} to WAL mode (got {mode!r})")


SUPERVISOR_CONNECTIONS = 5  # a server's connections one supervisor holds at most
WORKER_CONNECTIONS = 2  # and each worker (one for its trial or its ask, one for the ask lock)


def engine_kwargs(url: str, busy_timeout_s: float, connections: int = 5) -> dict[str, object]:
    """SQLAlchemy engine arguments: a busy timeout for SQLite; for a server, liveness checks
    and a pool of at most ``connections`` (PostgreSQL's default cap is 100 for everyone)."""
    if sqlite_path(url) is not None:
        return {"connect_args": {"timeout": busy_timeout_s}}
    size = max(1, connections - 1)
    return {"pool_pre_ping": True, "pool_size": size, "max_overflow": connections - size}


def open_storage(
    url: str,
    busy_timeout_s: float,
    heartbeat_interval_s: int | None = None,
    grace_period_s: int | None = None,
    outage_s: float = 120.0,
    quiet: bool = False,
    connections: int = SUPERVISOR_CONNECTIONS,
) -> RDBStorage:
    """Open (creating the schema if needed) the RDB storage at ``url``, behind an outage guard
    (:class:`~hpo.storage.resilient.ResilientStorage`) that rides out transient errors for up
    to ``outage_s`` seconds.

    The supervisor passes a heartbeat interval and grace period (it records heartbeats of the
    trials it runs and reaps stale ones); workers open the storage without them, ``quiet``
    (their outage lines are debug lines: the supervisor's say it once).
    """
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage

    from hpo.storage.outage import OutageGuard
    from hpo.storage.resilient import ResilientStorage

    guard = OutageGuard(display_url(url), outage_s, _password(url), loud=not quiet)
    with _creating(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval, grace_period
        rdb = guard.call(
            RDBStorage,
            url,
            engine_kwargs=engine_kwargs(url, busy_timeout_s, connections),
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
        )
    return ResilientStorage(rdb, guard)


@contextlib.contextmanager
def _creating(url: str) -> Iterator[None]:
    """Supervisors started together on a new SQLite file create Optuna's tables one at a time
    (both would try, and the second fails with "table … already exists")."""
    path, lock = sqlite_path(url), ask_lock_path(url)
    if path is None or lock is None or not path.parent.is_dir():
        yield
        return
    with flocked(lock):  # the slot claim's file
        yield


def _password(url: str) -> str | None:
    try:
        password = make_url(url).password
    except Exception:
        return None
    return str(password) if password else None

"""An RDB storage that rides out storage outages: every call goes through an
:class:`~hpo.storage.outage.OutageGuard`.

:class:`ResilientStorage` *is an* ``RDBStorage`` (so Optuna still puts its trial cache in front
of it, and every place typed for an RDB storage takes it) that delegates to the real one: each
public method, and the private heartbeat query hpo uses, is retried on transient errors for up
to ``storage.outage_s`` seconds; a permanent error or a longer outage raises
:class:`~hpo.storage.outage.StorageOutage` with the real cause in one line. So ``ask``, ``tell``,
``report``, ``should_prune``, heartbeats and user attributes all survive a database restart.

Retrying a write whose commit reached the server just before the connection dropped would
repeat it; Optuna's writes are idempotent but for ``create_new_trial`` (a spare trial would be
left RUNNING and reaped later) — a window of microseconds per outage.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage

from hpo.storage.outage import TRANSIENT_MARKERS, OutageGuard

T = TypeVar("T")

# Private RDBStorage methods that open their own session (Optuna's _CachedStorage calls them,
# hpo's reaper the last one): retried as a whole. The other private ones work inside a session
# their caller holds and go straight to the real storage.
PRIVATE_GUARDED = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
)


class ResilientStorage(RDBStorage):
    """``rdb`` behind an outage guard (the wrapper holds no engine of its own)."""

    # Called with (trial_id, step) after each intermediate value is stored: a worker's trial
    # runner watches its trial's reports this way (hpo.execution.settle).
    on_report: Callable[[int, int], None] | None = None

    def __init__(self, rdb: RDBStorage, guard: OutageGuard) -> None:  # noqa: D107
        # RDBStorage.__init__ is not called: every attribute the wrapper lacks is the real
        # storage's (__getattr__), so Optuna's helpers that read them still work.
        self._rdb = rdb
        self.guard = guard

    def __getattr__(self, name: str) -> Any:
        if name in ("_rdb", "guard"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._rdb, name)

    @property  # read-only: the real storage owns its engine
    def engine(self) -> Any:  # type: ignore[override]
        """The real storage's engine, whose ``connect`` rides out outages (hpo's own queries
        outside Optuna's methods, e.g. the PostgreSQL advisory lock of slot claims)."""
        return _GuardedEngine(self._rdb.engine, self.guard)

    def __getstate__(self) -> dict[Any, Any]:
        return {"_rdb": self._rdb, "guard": self.guard}

    def __setstate__(self, state: dict[Any, Any]) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:  # the real storage disposes of its engine itself
        pass

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        """``RDBStorage.set_trial_intermediate_value``, riding out outages; then ``on_report``."""
        self.guard.call(self._rdb.set_trial_intermediate_value, trial_id, step, intermediate_value)
        if self.on_report is not None:
            self.on_report(trial_id, step)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` (a function of this storage's database) through the outage guard."""
        return self.guard.call(fn, *args, **kwargs)


class _GuardedEngine:
    """A SQLAlchemy engine whose connections ride out outages (see :class:`_GuardedConnection`)."""

    def __init__(self, engine: Any, guard: OutageGuard) -> None:
        self._engine = engine
        self._guard = guard

    def connect(self) -> _GuardedConnection:
        return _GuardedConnection(self._guard.call(self._engine.connect), self._guard)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _GuardedConnection:
    """A connection whose ``execute`` and ``commit`` are retried through the guard: after a
    failure it is rolled back, and SQLAlchemy reconnects on the next attempt. Session state
    (an advisory lock) does not survive a server restart: a statement that releases it then
    runs on a new session and releases nothing."""

    def __init__(self, conn: Any, guard: OutageGuard) -> None:
        self._conn = conn
        self._guard = guard

    def _attempt(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            raise

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._guard.call(self._attempt, self._conn.execute, *args, **kwargs)

    def commit(self) -> None:
        self._guard.call(self._attempt, self._conn.commit)

    def __enter__(self) -> _GuardedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):  # a connection the outage broke
            self._conn.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _guarded(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.guard.call(getattr(self._rdb, name), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``RDBStorage.{name}``, riding out storage outages."
    return method


def _delegated(name: str) -> Callable[..., Any]:
    def method(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._rdb, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _wrap_methods() -> None:
    """Every method of RDBStorage: public ones (and the heartbeat query) guarded, the other
    private ones (used inside a session the caller holds) handed straight to the real one."""
    for name in dir(RDBStorage):
        if name.startswith("__") or not callable(getattr(RDBStorage, name)):
            continue
        if isinstance(RDBStorage.__dict__.get(name), staticmethod):
            continue
        if name in ResilientStorage.__dict__:  # its own (the report hook)
            continue
        if not name.startswith("_") or name in PRIVATE_GUARDED:
            setattr(ResilientStorage, name, _guarded(name))
        else:
            setattr(ResilientStorage, name, _delegated(name))


def _quiet_outage_fallback(record: logging.LogRecord) -> bool:
    """Drop Optuna's "Caught an error from sqlalchemy … Falling back" (a multi-line warning with
    the SQL) when the error is an outage: the guard says so in one line."""
    text = record.getMessage()
    if not text.startswith("Caught an error from sqlalchemy"):
        return True
    return not any(marker in text.lower() for marker in TRANSIENT_MARKERS)


_wrap_methods()
logging.getLogger("optuna.storages._rdb.storage").addFilter(_quiet_outage_fallback)

"""Storage failures: which are an outage to ride out, which end the run, and the one line that
names their real cause.

A *transient* failure (the server refuses or drops connections while it restarts or fails over,
SQLite stays locked past its busy timeout) is retried with exponential backoff for up to
``storage.outage_s`` seconds, one log line when the outage starts and one when it ends. A
*permanent* one (a full disk, a read-only file system, a corrupt file, a wrong password), or an
outage past the limit, raises :class:`StorageOutage` whose message is the DBAPI error's own first
line, not Optuna's generic "An exception is raised during the commit … e.g. exceeding max
length". Anything else (a missing study, a finished trial, an integrity error) is no storage
failure and passes through untouched.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from hpo.errors import HpoError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Lower-case fragments of DBAPI messages. Permanent ones are checked first: "connection to server
# … failed: FATAL: password authentication failed" names a connection but is no outage.
PERMANENT_MARKERS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "disk is full",
    "no space left",
    "could not extend file",
    "readonly database",
    "read-only",
    "malformed",
    "not a database",
    "disk i/o error",
    "permission denied",
    "unable to open database file",
)
TRANSIENT_MARKERS = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "the database system is",  # … shutting down / starting up / in recovery mode
    "cannot connect now",
    "ssl connection has been closed",
    "connection already closed",
    "no connection to the server",
    "could not receive data",
    "could not send data",
    "broken pipe",
    "database is locked",  # SQLite: busy past storage.busy_timeout_s
    "database table is locked",
)


class Failure(str, enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True)
class Diagnosis:
    """What a storage failure is, and its real cause in one line."""

    kind: Failure
    cause: str


class StorageOutage(HpoError):
    """The storage failed permanently, or stayed unreachable past ``storage.outage_s``."""


def diagnose(error: BaseException) -> Diagnosis | None:
    """Classify ``error`` (None: not a storage failure), looking through Optuna's
    ``StorageInternalError`` and SQLAlchemy's wrappers to the DBAPI error."""
    import sqlalchemy.exc as sa

    for e in _chain(error):
        if isinstance(e, sa.DBAPIError):
            orig = e.orig if e.orig is not None else e
            cause = _first_line(orig)
            kind = _kind_of(cause)
            if kind is None:
                transient = e.connection_invalidated or isinstance(e, sa.InterfaceError)
                if not (transient or isinstance(e, sa.OperationalError)):
                    return None  # a data or programming error: not the storage failing
                kind = Failure.TRANSIENT if transient else Failure.PERMANENT
            return Diagnosis(kind, cause)
        if isinstance(e, (sa.DisconnectionError, sa.TimeoutError)):  # pool: no connection
            return Diagnosis(Failure.TRANSIENT, _first_line(e))
        if _is_dbapi_error(e):  # sqlite3 / psycopg2 raised outside SQLAlchemy
            cause = _first_line(e)
            return Diagnosis(_kind_of(cause) or Failure.PERMANENT, cause)
    return None


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and e not in seen and len(seen) < 8:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _is_dbapi_error(e: BaseException) -> bool:
    import sqlite3

    if isinstance(e, sqlite3.Error):
        return True
    module = type(e).__module__ or ""
    return module.startswith(("psycopg2", "psycopg")) and type(e).__name__.endswith("Error")


def _kind_of(cause: str) -> Failure | None:
    text = cause.lower()
    if any(marker in text for marker in PERMANENT_MARKERS):
        return Failure.PERMANENT
    if any(marker in text for marker in TRANSIENT_MARKERS):
        return Failure.TRANSIENT
    return None


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text[:300]


_TAIL_S = 10.0  # a failure this soon after an outage ended belongs to it


class OutageGuard:
    """Runs storage calls, riding out transient failures for up to ``outage_s`` seconds.

    One outage spans from the first failed call to the first successful one, across calls:
    the calls made during it share its time limit. Once the guard has given up (a permanent
    failure, or the limit passed), later calls are tried once: a run that stops because of
    the storage records what it still can without waiting again.
    """

    def __init__(self, where: str, outage_s: float, secret: str | None, loud: bool) -> None:
        """``where`` names the storage in messages (its URL with the password masked);
        ``secret`` (the password) is masked in every message too; ``loud``: the outage's
        start and end are warnings (the supervisor) rather than debug lines (a worker)."""
        self.where = where
        self.outage_s = outage_s
        self._secret = secret or None
        self._level = logging.WARNING if loud else logging.DEBUG
        self._since: float | None = None  # monotonic start of the current outage
        self._back_at = -1e9  # when the last outage ended
        self._silent = False  # this outage is the tail of the last one (not logged again)
        self.gave_up: str | None = None  # why, once the guard stopped retrying

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._transient),
            stop=self._stop,
            wait=tenacity.wait_exponential(multiplier=0.2, max=2.0) + tenacity.wait_random(0, 0.3),
            before_sleep=self._note,
            reraise=True,
        )
        try:
            result = retrying(fn, *args, **kwargs)
        except Exception as e:
            diagnosis = diagnose(e)
            if diagnosis is None:
                raise
            raise self._give_up(diagnosis) from e
        if self._since is not None:
            if not self._silent:
                logger.log(
                    self._level,
                    "storage %s is back after an outage of %.1f s",
                    self.where,
                    time.monotonic() - self._since,
                )
            self._since, self._silent = None, False
            self._back_at = time.monotonic()
        return result

    def _transient(self, e: BaseException) -> bool:
        diagnosis = diagnose(e)
        return diagnosis is not None and diagnosis.kind is Failure.TRANSIENT

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if self.gave_up is not None:
            return True
        return self._since is not None and time.monotonic() - self._since >= self.outage_s

    def _note(self, state: tenacity.RetryCallState) -> None:
        if self._since is not None:
            return
        self._since = state.start_time
        # Pooled connections opened before a server restart fail once more right after it is
        # back: the same outage, not a new one to announce.
        self._silent = time.monotonic() - self._back_at < _TAIL_S
        if self._silent:
            return
        error = state.outcome.exception() if state.outcome is not None else None
        diagnosis = diagnose(error) if error is not None else None
        cause = self.mask(diagnosis.cause) if diagnosis else "unknown"
        logger.log(
            self._level,
            "storage %s unreachable (%s): retrying for up to %g s (storage.outage_s)",
            self.where,
            cause,
            self.outage_s,
        )

    def _give_up(self, diagnosis: Diagnosis) -> StorageOutage:
        cause = self.mask(diagnosis.cause)
        if diagnosis.kind is Failure.TRANSIENT:
            since = self._since if self._since is not None else time.monotonic()
            lasted = time.monotonic() - since
            text = (
                f"storage {self.where} unreachable for {lasted:.0f} s "
                f"(storage.outage_s={self.outage_s:g}): {cause}"
            )
        else:
            text = f"storage {self.where} failed: {cause}"
        if self.gave_up is None:
            self.gave_up = text
        return StorageOutage(text)

    def mask(self, text: str) -> str:
        """``text`` with the storage's password replaced by ``***``."""
        return text.replace(self._secret, "***") if self._secret else text

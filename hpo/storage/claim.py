"""Exactly ``n_trials``, whatever the number of supervisors: a trial slot is claimed atomically.

Every worker of every supervisor of a study (on one node or many) asks for a trial only inside
:meth:`SlotClaim.held`, a lock shared by all of them (held to count and to create the trial;
the sampler works after it is released, see :mod:`hpo.execution.proposer`): an ``flock`` on
``ask.lock`` in an SQLite database's folder (:mod:`.files`; one machine by construction) or a
PostgreSQL advisory lock keyed by the study. Inside it the asker counts the claimed slots —
COMPLETE, PRUNED, RUNNING and WAITING trials — and asks only while they are fewer than the
target, or when a WAITING trial (a retry, an enqueued configuration) is there to be taken,
which turns a claimed slot RUNNING without adding one. A failed trial frees its slot; its
retry, enqueued WAITING, holds it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from hpo.storage import _private
from hpo.storage.files import ask_lock_path, flocked, sqlite_path

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
_ADVISORY_NAMESPACE = 0x68706F  # "hpo": the advisory lock's first key, the study id its second


class SlotClaim:
    """The lock around count-and-ask of one study, and the count itself."""

    def __init__(
        self,
        storage: RDBStorage,
        url: str,
        study_id: int,
        count: Callable[[Collection[TrialState]], int] | None = None,
    ) -> None:
        """``count(states)`` counts the study's trials in ``states`` (by default Optuna's
        ``get_n_trials``, which reads every such trial)."""
        self._storage = storage
        self._study_id = study_id
        self._count = count or (lambda states: storage.get_n_trials(study_id, tuple(states)))
        path = sqlite_path(url) if url else None
        self._lock_path = ask_lock_path(url) if url else None
        self._postgres = url.startswith("postgresql")
        if url and path is None and not self._postgres:
            logger.warning("storage %s has no shared lock: supervisors may overshoot", url)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the study's ask lock for the block (every node's supervisors wait on it)."""
        if self._lock_path is not None:
            with flocked(self._lock_path):
                yield
        elif self._postgres:
            from sqlalchemy import text

            engine = _private.unwrap(self._storage).engine  # type: ignore[attr-defined]
            with engine.connect() as conn:
                keys = {"ns": _ADVISORY_NAMESPACE, "id": self._study_id}
                conn.execute(text("SELECT pg_advisory_lock(:ns, :id)"), keys)
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), keys)
                    conn.commit()
        else:
            yield

    def free(self, target: int) -> bool:
        """Whether a trial may be asked now (call inside :meth:`held`): fewer claimed slots
        than ``target``, or a WAITING trial to take."""
        if self._count((TrialState.WAITING,)):
            return True
        return self._count(CLAIMED) < target

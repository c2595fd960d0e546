"""The only uses of Optuna's private storage API in hpo, each with a public fallback or a test.

- one transaction and one upsert for many user attributes of a trial (Optuna commits each
  on its own, reading the trial again for each);
- the storage id of an ``optuna.Trial``;
- whether a trial ever had a heartbeat, and which trials' heartbeats are stale (Optuna exposes
  these only through ``fail_stale_trials``, which fails them itself);
- how many trials of a study are in some states, counted by the database (Optuna's
  ``get_n_trials`` builds every such trial first: its cost grows with the study);
- a trial's ``fixed_params`` system attribute (what ``Study.enqueue_trial`` writes): values
  ``trial.suggest_*`` returns when the objective asks for them, recorded only then.

``tests/test_storage.py`` fails if a newer Optuna moves any of these names.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import TrialState

Writer = Callable[[int, Mapping[str, Any]], None]


def unwrap(storage: BaseStorage) -> BaseStorage:
    """The RDB storage behind a caching wrapper (Optuna's ``_CachedStorage``), or ``storage``."""
    return getattr(storage, "_backend", storage)


def batch_writer(storage: BaseStorage) -> Writer | None:
    """A one-transaction writer of user attributes for Optuna's RDB storage, if it has one.

    On PostgreSQL and SQLite it reads the trial once (raising ``UpdateFinishedTrialError`` if
    it finished) and upserts every attribute in one statement, on Optuna's unique
    ``(trial_id, key)``: three round trips whatever the number of attributes, where Optuna's
    per-attribute writer reads the trial again for each one. Other databases get Optuna's
    writer per attribute, still in one transaction.
    """
    from optuna.storages import RDBStorage

    backend = unwrap(storage)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:
        return None
    set_one = getattr(backend, "_set_trial_attr_without_commit", None)
    if not isinstance(backend, RDBStorage) or set_one is None:
        return None
    upsert = _upsert_for(backend.engine.name)
    model = models.TrialUserAttributeModel

    def write(trial_id: int, attrs: Mapping[str, Any]) -> None:
        if not attrs:
            return
        with _create_scoped_session(backend.scoped_session, True) as session:
            if upsert is None:
                for key, value in attrs.items():
                    set_one(session, model, trial_id, key, value)
                return
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, trial.state)  # type: ignore[arg-type]
            rows = [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
            insert = upsert(model).values(rows)
            session.execute(
                insert.on_conflict_do_update(
                    index_elements=[model.trial_id, model.key],
                    set_={"value_json": insert.excluded.value_json},
                )
            )

    return write


def _upsert_for(dialect: str) -> Any:
    """The ``insert`` with ``ON CONFLICT DO UPDATE`` of ``dialect``, or None."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    return None


def trial_id_of(trial: Any) -> int:
    """The storage id of an ``optuna.Trial`` (Optuna keeps it private; reading it saves a
    query per trial)."""
    return int(trial._trial_id)


def stale_trial_ids(storage: RDBStorage, study_id: int) -> set[int]:
    """Trials whose last heartbeat is older than the storage's grace period."""
    return set(unwrap(storage)._get_stale_trial_ids(study_id))  # type: ignore[attr-defined]


def has_heartbeat(storage: RDBStorage, trial_id: int) -> bool:
    """Whether ``trial_id`` ever recorded a heartbeat."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend: Any = unwrap(storage)
    with _create_scoped_session(backend.scoped_session) as session:
        return models.TrialHeartbeatModel.where_trial_id(trial_id, session) is not None


def count_trials(storage: BaseStorage, study_id: int, states: Collection[TrialState]) -> int:
    """Trials of ``study_id`` in ``states``: one ``COUNT`` in the database for an RDB storage
    (whatever the size of the study), Optuna's ``get_n_trials`` for any other."""
    from optuna.storages import RDBStorage

    backend: Any = unwrap(storage)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import func
    except ImportError:
        return storage.get_n_trials(study_id, tuple(states))
    if not isinstance(backend, RDBStorage):
        return storage.get_n_trials(study_id, tuple(states))
    trial = models.TrialModel
    with _create_scoped_session(backend.scoped_session) as session:
        query = session.query(func.count(trial.trial_id)).filter(
            trial.study_id == study_id, trial.state.in_(list(states))
        )
        return int(query.scalar() or 0)


FIXED_PARAMS = "fixed_params"  # the system attribute Optuna's enqueue_trial fills


def fix_params(trial: Any, frozen: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Make ``params`` the values ``trial.suggest_*`` returns for them on ``trial`` (an
    ``optuna.Trial``; ``frozen``, its state as just read; its enqueued values win), recorded as
    parameters only when the objective suggests them; returns its fixed values now. The trial
    object reads them too (Optuna reads them when a Trial is made)."""
    fixed = dict(frozen.system_attrs.get(FIXED_PARAMS, {}))
    new = {k: v for k, v in params.items() if k not in fixed}
    if new:
        fixed = {**new, **fixed}
        trial.storage.set_trial_system_attr(frozen._trial_id, FIXED_PARAMS, fixed)
        trial._fixed_params = fixed
    return fixed


def rdb_url(study: Any) -> str | None:
    """The SQLAlchemy URL of an Optuna study's storage; None for an in-memory study; a
    ValueError naming the storage for any other kind (journal, gRPC)."""
    from optuna.storages import InMemoryStorage, RDBStorage

    storage = unwrap(study._storage)
    if isinstance(storage, RDBStorage):
        return str(storage.url)
    if isinstance(storage, InMemoryStorage):
        return None
    raise ValueError(type(storage).__name__)


def enter_optimize_loop(study: Any) -> None:
    """Let ``study.stop()`` be called from this thread (Optuna allows it only inside its own
    optimize loop: a callback of hpo.optimize calls it from hpo's run watcher)."""
    study._thread_local.in_optimize_loop = True


def stop_requested(study: Any) -> bool:
    """Whether ``study.stop()`` was called since :func:`enter_optimize_loop`."""
    return bool(getattr(study, "_stop_flag", False))


def finish_waiting(study: Any, ended: Any) -> None:
    """Give a study's WAITING trial (enqueued in memory, run in hpo's file) the end it had
    there: Optuna's ``add_trial`` cannot update a trial, its storage API can."""
    from optuna.trial import TrialState

    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, ended.number)
    storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    for name, value in ended.params.items():
        dist = ended.distributions[name]
        storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    for step, value in ended.intermediate_values.items():
        storage.set_trial_intermediate_value(trial_id, step, value)
    for key, value in ended.user_attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    storage.set_trial_state_values(trial_id, ended.state, ended.values)

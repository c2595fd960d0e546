"""The only uses of Optuna's private storage API in hpo, each with a public fallback or a test.

- one transaction for many user attributes of a trial (Optuna commits each on its own);
- whether a trial ever had a heartbeat, and which trials' heartbeats are stale (Optuna exposes
  these only through ``fail_stale_trials``, which fails them itself).

``tests/test_storage.py`` fails if a newer Optuna moves any of these names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage

Writer = Callable[[int, Mapping[str, Any]], None]


def unwrap(storage: BaseStorage) -> BaseStorage:
    """The RDB storage behind a caching wrapper (Optuna's ``_CachedStorage``), or ``storage``."""
    return getattr(storage, "_backend", storage)


def batch_writer(storage: BaseStorage) -> Writer | None:
    """A one-transaction writer of user attributes for Optuna's RDB storage, if it has one."""
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

    def write(trial_id: int, attrs: Mapping[str, Any]) -> None:
        with _create_scoped_session(backend.scoped_session, True) as session:
            for key, value in attrs.items():
                set_one(session, models.TrialUserAttributeModel, trial_id, key, value)

    return write


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

"""Read-only access to a study's storage for the commands that only look."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


def open_optuna_storage(url: str, busy_timeout_s: float) -> RDBStorage:
    """Optuna's storage over an existing study database, without creating tables.

    Callers check the study first (:class:`hpo.look.db.StudyDB`), so nothing is created here either.
    """
    from optuna.storages import RDBStorage

    from hpo.storage.rdb import engine_kwargs

    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url, busy_timeout_s),
        skip_table_creation=True,
    )

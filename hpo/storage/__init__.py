"""The study's storage: opening and preparing it (:mod:`.rdb`), the supervisor's writes
(:mod:`.study`), riding out outages (:mod:`.outage`, :mod:`.resilient`), and the read-only
access of the look commands (:mod:`.readonly`).

This package is the only place in hpo that touches Optuna's private storage API
(:mod:`._private`).
"""

from hpo.storage.outage import StorageOutage, diagnose
from hpo.storage.rdb import (
    check_writable,
    display_url,
    open_storage,
    prepare_storage,
    sqlite_path,
    storage_exists,
)
from hpo.storage.resilient import ResilientStorage
from hpo.storage.study import StudyStore, trial_id_of, user_attrs_writer

__all__ = [
    "ResilientStorage",
    "StorageOutage",
    "StudyStore",
    "check_writable",
    "diagnose",
    "display_url",
    "open_storage",
    "prepare_storage",
    "sqlite_path",
    "storage_exists",
    "trial_id_of",
    "user_attrs_writer",
]

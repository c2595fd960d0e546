"""The study's storage: where its files are (:mod:`.files`: an SQLite database and one folder
of hpo's files beside it), opening and preparing it (:mod:`.rdb`), the supervisor's writes
(:mod:`.study`), riding out outages (:mod:`.outage`, :mod:`.resilient`), and the read-only
access of the look commands (:mod:`.readonly`).

This package is the only place in hpo that touches Optuna's private storage API
(:mod:`._private`).
"""

from hpo.storage.files import sqlite_path, study_folder
from hpo.storage.outage import StorageOutage, diagnose
from hpo.storage.rdb import (
    check_writable,
    display_url,
    open_storage,
    prepare_storage,
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
    "study_folder",
    "trial_id_of",
    "user_attrs_writer",
]

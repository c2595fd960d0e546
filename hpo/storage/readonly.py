"""Read-only access to a study's storage for the commands that only look (stats, status, report,
dashboard): nothing they open can create a file next to the study or write a row into it.

An SQLite study is opened ``immutable=1`` when no ``-wal`` lies beside it (no writer, nothing
pending: SQLite then creates no ``-wal``/``-shm`` that a read-only connection could not remove,
and a read-only directory still answers) and ``mode=ro`` while a ``-wal`` exists (a study runs;
those files are its writer's), falling back to ``immutable=1`` where ``mode=ro`` cannot open. A
PostgreSQL session is ``default_transaction_read_only``, so even a bug cannot write. Optuna's
storage comes wrapped in :class:`ReadOnlyStorage`, which refuses every write method.

Like any SQLite reader, one that is reading just as the writer closes can leave the writer's
(then empty) ``-wal``/``-shm`` behind; the next writer removes them, and the next reader reads
``mode=ro`` (``immutable=1`` in a read-only directory) meanwhile.
"""

from __future__ import annotations

import abc
import logging
import sqlite3
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

from optuna.storages import BaseStorage

from hpo.errors import ConfigError, HpoError
from hpo.storage.files import sqlite_path
from hpo.storage.rdb import engine_kwargs

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import StudyDirection
    from optuna.study._frozen import FrozenStudy
    from optuna.trial import FrozenTrial, TrialState

logger = logging.getLogger(__name__)

Refusal = Callable[[str], Exception]  # builds the exception a refused write raises

READ_ONLY_PG_OPTION = "-c default_transaction_read_only=on"


class StorageReadOnlyError(HpoError):
    """A write to a storage that a look command opened read-only."""


class ReadOnlyConnection(sqlite3.Connection):
    """An sqlite3 connection that remembers the URI it was opened with (``immutable`` or ``ro``)."""

    uri: str = ""


def sqlite_read_uri(path: Path, immutable: bool | None = None) -> str:
    """The URI to read ``path``: ``immutable=1`` unless a ``-wal`` beside it says a writer is on."""
    if immutable is None:
        immutable = not _wal_of(path).exists()
    query = "immutable=1" if immutable else "mode=ro"
    return f"file:{quote(str(path.resolve()))}?{query}"


def connect_sqlite(
    path: Path, timeout_s: float, *, check_same_thread: bool = True
) -> ReadOnlyConnection:
    """A connection that only reads ``path``; with no writer about, it creates no file either."""
    uri = sqlite_read_uri(path)
    try:
        return _open(uri, timeout_s, check_same_thread)
    except sqlite3.OperationalError as e:
        if "immutable=1" in uri or "locked" in str(e):
            raise
        logger.debug("%s: mode=ro failed (%s); reading it immutable", path, e)
    return _open(sqlite_read_uri(path, immutable=True), timeout_s, check_same_thread)


def _open(uri: str, timeout_s: float, check_same_thread: bool) -> ReadOnlyConnection:
    conn = sqlite3.connect(
        uri,
        uri=True,
        timeout=timeout_s,
        check_same_thread=check_same_thread,
        factory=ReadOnlyConnection,
    )
    assert isinstance(conn, ReadOnlyConnection)
    try:
        conn.execute("PRAGMA query_only = ON")  # a second lock: no statement may write
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL index
    except sqlite3.Error:
        conn.close()
        raise
    conn.uri = uri
    return conn


def _wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def readonly_engine_args(url: str, busy_timeout_s: float) -> tuple[str, dict[str, Any]]:
    """``create_engine`` arguments of a read-only engine over ``url`` (SQLite or PostgreSQL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    path = sqlite_path(url)
    if path is not None:

        def creator() -> sqlite3.Connection:
            return connect_sqlite(path, busy_timeout_s, check_same_thread=False)

        # A connection per session: each one decides immutable / ro afresh and holds no lock
        # that would keep a finishing writer from removing its -wal.
        return url, {"creator": creator, "poolclass": NullPool}  # the URL only names the file
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"storage.url must be SQLite or PostgreSQL to read it, got {url!r}")
    options = " ".join(filter(None, [str(parsed.query.get("options") or ""), READ_ONLY_PG_OPTION]))
    return url, {"pool_pre_ping": True, "connect_args": {"options": options}}


def open_optuna_storage(
    url: str,
    busy_timeout_s: float,
    *,
    allow_writes: bool = False,
    refusal: Refusal | None = None,
) -> BaseStorage:
    """Optuna's storage over an existing study, read-only unless ``allow_writes``.

    Tables are never created (callers check the study first with :class:`hpo.look.db.StudyDB`);
    Optuna's start-up only reads the version tables of a study it made, and anything else would
    fail on the read-only connection. ``refusal`` builds the exception a refused write raises.
    """
    from optuna.exceptions import StorageInternalError
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import SQLAlchemyError

    if allow_writes:
        kwargs = engine_kwargs(url, busy_timeout_s)
        return RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True)
    engine_url, kwargs = readonly_engine_args(url, busy_timeout_s)
    try:
        rdb = RDBStorage(engine_url, engine_kwargs=kwargs, skip_table_creation=True)
    except (SQLAlchemyError, StorageInternalError) as e:  # e.g. version tables to stamp first
        root: BaseException = e
        while root.__cause__ is not None:  # Optuna's wrapper says "during the commit"
            root = root.__cause__
        raise ConfigError(f"storage {url} cannot be opened read-only: {root}") from e
    return ReadOnlyStorage(rdb, refusal)


class ReadOnlyStorage(BaseStorage):
    """A storage that reads through ``storage`` and refuses every write with one clear error.

    Every public method of :class:`BaseStorage` not listed as a read below refuses (a method a
    newer Optuna adds, too), and so does any other public method of ``storage`` that is not a
    ``get_`` read (e.g. ``RDBStorage.upgrade``); its private names are not reachable at all.
    """

    def __init__(self, storage: BaseStorage, refusal: Refusal | None = None) -> None:
        self._storage = storage
        self._refusal: Refusal = refusal or StorageReadOnlyError

    @property
    def backend(self) -> BaseStorage:
        """The storage that answers the reads."""
        return self._storage

    def _refuse(self, method: str) -> NoReturn:
        raise self._refusal(f"{method} refused: the study's storage is open read-only")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # nothing private of the storage: its writers live there
            raise AttributeError(name)
        value = getattr(self._storage, name)  # AttributeError when it has no such name either
        if name.startswith("get_") or not callable(value):
            return value
        return lambda *args, **kwargs: self._refuse(name)

    # -- reads ---------------------------------------------------------------------------

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._storage.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._storage.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._storage.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._storage.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._storage.get_all_studies()

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._storage.get_trial(trial_id)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def get_trial_number_from_id(self, trial_id: int) -> int:
        return self._storage.get_trial_number_from_id(trial_id)

    def get_trial_param(self, trial_id: int, param_name: str) -> float:
        return self._storage.get_trial_param(trial_id, param_name)

    def get_n_trials(
        self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None
    ) -> int:
        return self._storage.get_n_trials(study_id, state)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self._storage.get_best_trial(study_id)

    def get_trial_params(self, trial_id: int) -> dict[str, Any]:
        return self._storage.get_trial_params(trial_id)

    def get_trial_user_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._storage.get_trial_user_attrs(trial_id)

    def get_trial_system_attrs(self, trial_id: int) -> dict[str, Any]:
        return self._storage.get_trial_system_attrs(trial_id)

    def remove_session(self) -> None:
        self._storage.remove_session()

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self._storage.check_trial_is_updatable(trial_id, trial_state)

    # -- writes: all refused -------------------------------------------------------------

    def create_new_study(
        self, directions: Sequence[StudyDirection], study_name: str | None = None
    ) -> int:
        self._refuse("create_new_study")

    def delete_study(self, study_id: int) -> None:
        self._refuse("delete_study")

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse("set_study_user_attr")

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._refuse("set_study_system_attr")

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        self._refuse("create_new_trial")

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        self._refuse("set_trial_param")

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        self._refuse("set_trial_state_values")

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        self._refuse("set_trial_intermediate_value")

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse("set_trial_user_attr")

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._refuse("set_trial_system_attr")


def _refusing(name: str) -> Callable[..., NoReturn]:
    def refuse(self: ReadOnlyStorage, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse(name)

    refuse.__name__ = name
    return refuse


def _fail_closed(cls: type[ReadOnlyStorage]) -> None:
    """Refuse every public method of BaseStorage this class does not define (new ones, too)."""
    for name, value in vars(BaseStorage).items():
        if callable(value) and not name.startswith("_") and name not in vars(cls):
            setattr(cls, name, _refusing(name))
    abc.update_abstractmethods(cls)


_fail_closed(ReadOnlyStorage)

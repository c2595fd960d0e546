"""SELECT-only access to one study for the commands that only look (stats, status, report).

They never create a database, a table, a study or a file: an SQLite file is read through
:func:`hpo.storage.readonly.connect_sqlite` (``immutable=1``, or ``mode=ro`` while a writer has
a ``-wal``), a server in a read-only session, and a missing storage or study is a
:class:`ConfigError` (one line, exit 2) before anything is touched.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.look import queries
from hpo.storage.rdb import display_url, sqlite_path
from hpo.storage.readonly import connect_sqlite, readonly_engine_args

if TYPE_CHECKING:
    from hpo.config.settings import Settings

logger = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True)
class StudyRef:
    """Which study to look at: its name, storage URL and the settings that come with them."""

    name: str
    url: str
    busy_timeout_s: float = 60.0
    n_trials: int | None = None  # the config's target, when known

    @classmethod
    def from_settings(cls, settings: Settings) -> StudyRef:
        return cls(
            name=settings.study.name,
            url=settings.storage.url,
            busy_timeout_s=settings.storage.busy_timeout_s,
            n_trials=settings.study.n_trials,
        )

    @property
    def shown(self) -> str:
        """The storage as people see it: the password masked (``url`` keeps it, to connect)."""
        return display_url(self.url)


class StudyDB:
    """SELECT-only access to one study's storage; rows come back as plain dicts.

    SQLite gets a fresh connection per query: it sees a writer that started since, and holds
    no lock that would keep a finishing writer from removing its ``-wal``.
    """

    def __init__(self, ref: StudyRef) -> None:
        self.ref = ref
        self._path = sqlite_path(ref.url)
        self._engine: Any = None
        self.dialect = "sqlite" if self._path is not None else _dialect_of(ref.url)
        self._connect()
        if not self.rows(queries.STUDY_ID):
            names = [r["study_name"] for r in self.rows(queries.STUDY_NAMES, study=None)]
            self.close()
            found = ", ".join(names) if names else "none"
            raise ConfigError(f"no study {ref.name!r} in {ref.shown} (studies there: {found})")

    def _connect(self) -> None:
        if self._path is not None:
            if not self._path.is_file():
                raise ConfigError(f"storage {self.ref.shown} does not exist (no file {self._path})")
            try:
                self._sqlite_rows("SELECT COUNT(*) FROM studies", {})
            except sqlite3.DatabaseError as e:
                raise ConfigError(f"storage {self.ref.shown} is not an Optuna database: {e}") from e
            return
        from sqlalchemy import create_engine

        url, kwargs = readonly_engine_args(self.ref.url, self.ref.busy_timeout_s)
        self._engine = create_engine(url, **kwargs)

    def _sqlite_rows(self, sql: str, params: dict[str, Any]) -> list[Row]:
        assert self._path is not None
        conn = connect_sqlite(self._path, self.ref.busy_timeout_s)
        try:
            conn.row_factory = sqlite3.Row
            cursor = conn.execute(sql, params)
            return [{k: _plain(row[k]) for k in row.keys()} for row in cursor.fetchall()]
        finally:
            conn.close()

    def rows(self, sql: str, **params: Any) -> list[Row]:
        """Run one query with ``:study`` bound to this study and ``params`` to the rest."""
        params = {"study": self.ref.name, **params}
        sql = queries.for_dialect(sql, self.dialect)
        if self._path is not None:
            return self._sqlite_rows(sql, params)
        from sqlalchemy import text

        with self._engine.connect() as conn:
            result = conn.execute(text(sql), params)
            return [{k: _plain(v) for k, v in row._mapping.items()} for row in result]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> StudyDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dialect_of(url: str) -> str:
    from sqlalchemy.engine import make_url

    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        shown = display_url(url)
        raise ConfigError(f"storage.url must be SQLite or PostgreSQL for this command, got {shown}")
    return name


def _plain(value: Any) -> Any:
    """Decimals (PostgreSQL numerics) as floats, so both back-ends give the same JSON."""
    return float(value) if isinstance(value, Decimal) else value

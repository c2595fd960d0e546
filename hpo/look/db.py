"""SELECT-only access to one study for the commands that only look (stats, status, report).

They never create a database, a table or a study: an SQLite file is opened with
``mode=ro``, a server through SQLAlchemy with nothing but SELECTs, and a missing storage or
study is a :class:`ConfigError` (one line, exit 2) before anything is touched.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from hpo.errors import ConfigError
from hpo.look import queries
from hpo.storage.rdb import sqlite_path

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


class StudyDB:
    """SELECT-only connection to one study's storage; rows come back as plain dicts."""

    def __init__(self, ref: StudyRef) -> None:
        self.ref = ref
        self._path = sqlite_path(ref.url)
        self._sqlite: sqlite3.Connection | None = None
        self._engine: Any = None
        self.dialect = "sqlite" if self._path is not None else _dialect_of(ref.url)
        self._connect()
        if not self.rows(queries.STUDY_ID):
            names = [r["study_name"] for r in self.rows(queries.STUDY_NAMES, study=None)]
            self.close()
            found = ", ".join(names) if names else "none"
            raise ConfigError(f"no study {ref.name!r} in {ref.url} (studies there: {found})")

    def _connect(self) -> None:
        if self._path is not None:
            if not self._path.is_file():
                raise ConfigError(f"storage {self.ref.url} does not exist (no file {self._path})")
            uri = f"file:{self._path.resolve()}?mode=ro"
            self._sqlite = sqlite3.connect(uri, uri=True, timeout=self.ref.busy_timeout_s)
            self._sqlite.row_factory = sqlite3.Row
            try:
                self._sqlite.execute("SELECT COUNT(*) FROM studies").fetchone()
            except sqlite3.DatabaseError as e:
                self.close()
                raise ConfigError(f"storage {self.ref.url} is not an Optuna database: {e}") from e
            return
        from sqlalchemy import create_engine

        self._engine = create_engine(self.ref.url, pool_pre_ping=True)

    def rows(self, sql: str, **params: Any) -> list[Row]:
        """Run one query with ``:study`` bound to this study and ``params`` to the rest."""
        params = {"study": self.ref.name, **params}
        sql = queries.for_dialect(sql, self.dialect)
        if self._sqlite is not None:
            cursor = self._sqlite.execute(sql, params)
            return [{k: _plain(row[k]) for k in row.keys()} for row in cursor.fetchall()]
        from sqlalchemy import text

        with self._engine.connect() as conn:
            result = conn.execute(text(sql), params)
            return [{k: _plain(v) for k, v in row._mapping.items()} for row in result]

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
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
        raise ConfigError(f"storage.url must be SQLite or PostgreSQL for this command, got {url!r}")
    return name


def _plain(value: Any) -> Any:
    """Decimals (PostgreSQL numerics) as floats, so both back-ends give the same JSON."""
    return float(value) if isinstance(value, Decimal) else value

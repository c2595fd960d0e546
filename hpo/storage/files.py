"""Where a study's files are: the database of an SQLite URL and one folder of hpo's files.

For a database ``<dir>/<stem>.db`` (any suffix: ``<stem>`` is the name without its last one; a
name without a suffix, ``<dir>/<name>``, gets ``<dir>/<name>.hpo/``) everything hpo writes
besides the database lives in the folder ``<dir>/<stem>/`` (:func:`study_folder`), so a listing
of ``<dir>`` shows each study's database and one folder. SQLite's own ``-wal`` and ``-shm``
files stay beside the database, where SQLite puts them. The folder holds:

- ``ask.lock``: the slot claim shared by every study in the database (:mod:`.claim`);
- ``<study>.<node>.lock``: one supervisor per study and node (:mod:`hpo.supervisor.lock`);
- ``<study>.<node>.log``: the log of a supervisor started with ``hpo tune --detach``;
- ``checkpoints/``: the default root of the trials' checkpoint directories
  (``checkpoints/<trial number>/``), and ``sim/``: the ledgers of simulated cards.

A database can hold several studies, so the per-study folders are named by the study: plain
(``checkpoints/``, ``sim/``) for the study whose name is the database's stem (the default,
``<dir>/<study>.db``), ``checkpoints-<study>/`` and ``sim-<study>/`` for any other study
(:func:`study_subdir`).

Server storages (PostgreSQL) and in-memory SQLite have no such folder: their supervisor locks
live in the user's cache directory, their checkpoints and simulated ledgers under
``storage.dir`` (``<study>.ckpt/``, ``<study>.sim/``).

Studies created before this layout keep working: each trial records its checkpoint directory
(user attribute ``checkpoint_dir``) and a retry resumes from the recorded one, so an old
``<dir>/<study>.ckpt/<n>/`` is still read. The old lock files beside the database
(``<study>.<node>.lock``, ``<stem>.ask.lock``) are no longer created; a supervisor lock file
left there is still honoured (:func:`legacy_lock_path`), so a supervisor of an older hpo
still running the study is not joined by a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from hpo.errors import ConfigError

ASK_LOCK = "ask.lock"


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other back-ends or in-memory SQLite)."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(  # the URL is not echoed: it may hold a password
            "storage.url is not a valid SQLAlchemy URL (dialect+driver://user:pass@host/db)"
        ) from None
    if parsed.get_backend_name() != "sqlite":
        return None
    return Path(parsed.database) if parsed.database not in (None, "", ":memory:") else None


def study_folder(url: str) -> Path | None:
    """hpo's folder of the SQLite database of ``url`` (None for servers and in-memory SQLite)."""
    db = sqlite_path(url)
    if db is None:
        return None
    db = db.resolve()
    return db.with_name(db.stem if db.suffix else f"{db.name}.hpo")


def ask_lock_path(url: str) -> Path | None:
    """The slot claim's lock file of an SQLite database (None for other storages)."""
    folder = study_folder(url)
    return None if folder is None else folder / ASK_LOCK


def study_subdir(url: str, study_name: str, kind: str) -> Path | None:
    """The folder ``kind`` (``checkpoints``, ``sim``) of study ``study_name`` in hpo's folder
    of an SQLite database: ``<kind>`` for the study named like the database, else
    ``<kind>-<study>`` (None for other storages)."""
    db, folder = sqlite_path(url), study_folder(url)
    if db is None or folder is None:
        return None
    own = study_name == (db.stem if db.suffix else db.name)
    return folder / (kind if own else f"{kind}-{study_name}")


def legacy_lock_path(url: str, name: str) -> Path | None:
    """Where hpo before the study folder kept the lock file ``name`` (beside the database)."""
    db = sqlite_path(url)
    return None if db is None else db.resolve().with_name(name)


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""One supervisor per study per node: an ``fcntl`` lock that a killed supervisor never leaves.

The lock file ``<study>.<node>.lock`` sits in an SQLite database's folder (``<dir>/<stem>/``,
:mod:`hpo.storage.files`) or, for a server storage, in the user's cache directory under a hash
of the storage and the study name. The kernel drops an ``flock`` when its process dies, however
it dies, so a stale lock file is harmless: the next ``hpo tune`` takes it. The holder writes
its pid and host into the file, so a second ``hpo tune`` can say which process runs the study.
A lock file that an older hpo left beside the database is taken too when it is there, so a
supervisor of that version still running the study is not joined by a second one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path
from typing import IO

from hpo.errors import ConfigError
from hpo.storage import display_url
from hpo.storage.files import legacy_lock_path, study_folder


def lock_path(url: str, study_name: str, node: str = "") -> Path:
    """Where the lock of study ``study_name`` in ``url`` for node ``node`` lives."""
    suffix = f".{node}" if node else ""
    folder = study_folder(url)
    if folder is not None:
        return folder / f"{study_name}{suffix}.lock"
    key = hashlib.sha256(f"{url}\0{study_name}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpo" / "locks"
    return cache / f"{study_name}-{key}{suffix}.lock"


class StudyLock:
    """Held while a supervisor runs the study; :meth:`acquire` refuses a second one."""

    def __init__(self, url: str, study_name: str, node: str = "") -> None:
        self.path = lock_path(url, study_name, node)
        self._legacy = legacy_lock_path(url, self.path.name)
        self._url, self._name, self._node = url, study_name, node
        self._file: IO[str] | None = None
        self._legacy_file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 (held until release)
        except OSError as e:
            raise ConfigError(f"cannot create the study lock {self.path}: {e.strerror}") from e
        self._take(handle)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        try:
            self._legacy_file = self._take_legacy()
        except ConfigError:
            self.release()
            raise

    def _take(self, handle: IO[str]) -> None:
        """Lock ``handle`` (closed on refusal), or raise ConfigError naming its holder."""
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"study {self._name!r} in {display_url(self._url)} is already run by {holder} "
                f"as node {self._node!r}: stop it first (hpo stop), or give this one another "
                "--node-id"
            ) from None

    def _take_legacy(self) -> IO[str] | None:
        """The lock file an older hpo kept beside the database, locked, if it is there."""
        if self._legacy is None:
            return None
        try:
            handle = open(self._legacy)  # noqa: SIM115 (never created: read, held until release)
        except OSError:
            return None
        self._take(handle)
        return handle

    def release(self) -> None:
        if self._legacy_file is not None:
            self._legacy_file.close()  # closing drops its flock
            self._legacy_file = None
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()  # no pid left behind to confuse a reader
        except OSError:
            pass
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

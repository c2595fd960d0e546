"""Checkpoints for objectives: atomic writes into the trial's checkpoint directory.

The supervisor gives every trial a directory (``hpo.current_context().checkpoint_dir``); a
retry of the trial inherits it, so an objective that saves after every epoch resumes where the
failed attempt stopped, and records the epoch it resumed from as ``resumed_from_epoch``
(:data:`RESUMED_ATTR`). Which directory a trial gets and when it is removed is the supervisor's
(:mod:`hpo.supervisor.checkpoints`).

Nothing here imports torch: objectives pass their own writer to :func:`atomic_write`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.contract import Attr

logger = logging.getLogger(__name__)

DIR_ATTR = Attr.CHECKPOINT_DIR  # user attribute: the trial's checkpoint directory
RESUMED_ATTR = Attr.RESUMED_FROM_EPOCH  # user attribute: last epoch restored from a checkpoint


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` then rename, so readers see old or new, never half.

    The temporary file is in the same directory (a rename across file systems is not atomic)
    and is flushed to disk before the rename.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def save_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as JSON."""

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj))

    atomic_write(path, write)


def load_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when there is none yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Connections planned: will this node's supervisor and workers fit the server's cap?

PostgreSQL refuses clients past ``max_connections`` (100 by default, for every user of the
server), a classic failure of large Optuna fleets ("too many clients"). Before it starts its
workers a supervisor compares what the server has in use with what this node will open —
:data:`~hpo.storage.rdb.SUPERVISOR_CONNECTIONS` plus
:data:`~hpo.storage.rdb.WORKER_CONNECTIONS` per worker — and says so in one line if it would
not fit.
"""

from __future__ import annotations

import logging
from typing import Any

from hpo.storage import _private
from hpo.storage.rdb import SUPERVISOR_CONNECTIONS, WORKER_CONNECTIONS

logger = logging.getLogger(__name__)


def planned(par: int) -> int:
    """Server connections a node running ``par`` workers opens at most."""
    return SUPERVISOR_CONNECTIONS + WORKER_CONNECTIONS * par


def check_capacity(storage: Any, url: str, par: int) -> str | None:
    """One warning line when this node's connections would pass the server's cap, else None
    (and None where the storage is not PostgreSQL or cannot say)."""
    if not url.startswith("postgresql"):
        return None
    from sqlalchemy import text

    try:
        engine = _private.unwrap(storage).engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            cap = int(conn.execute(text("SHOW max_connections")).scalar_one())
            used = int(conn.execute(text("SELECT count(*) FROM pg_stat_activity")).scalar_one())
    except Exception as e:  # a server that hides pg_stat_activity: nothing to say
        logger.debug("cannot read the server's connections: %s", e)
        return None
    need = planned(par)
    if used + need <= cap:
        return None
    return (
        f"this node opens up to {need} connections (par={par}); the server has {used} of "
        f"max_connections={cap} in use: raise max_connections or lower par"
    )

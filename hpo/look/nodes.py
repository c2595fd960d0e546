"""The study's nodes as ``hpo status`` shows them: read from the storage, never written.

Each supervisor keeps a record under ``hpo:node:<name>`` (see :mod:`hpo.supervisor.nodes`);
a node is *alive* while it beats (within three heartbeat intervals), *left* when it ended
cleanly, and *gone* when it stopped beating without leaving (killed, its machine lost).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.contract import NODE_PREFIX
from hpo.look import queries

if TYPE_CHECKING:
    from rich.table import Table

    from hpo.look.db import StudyDB

STALE_AFTER_S = 35.0  # no heartbeat for this long (3.5 default intervals): the node is gone


@dataclass
class NodeView:
    name: str
    state: str  # alive | left | gone
    host: str
    pid: int | None
    par: int | None
    devices: list[dict[str, Any]] = field(default_factory=list)
    running: int = 0  # RUNNING trials owned by the node (from the trials, not its record)
    per_hour: float = 0.0  # trials it finished in the last hour
    beat_age_s: float | None = None


def read_nodes(db: StudyDB, now: float | None = None) -> list[NodeView]:
    """Every node that ever ran the study, with its running trials and recent throughput."""
    now = time.time() if now is None else now
    records = {
        row["key"].removeprefix(NODE_PREFIX): json.loads(row["value_json"])
        for row in db.rows(queries.NODES)
    }
    if not records:
        return []
    running: dict[str, int] = {}
    for row in db.rows(queries.RUNNING_BY_NODE):
        running[json.loads(row["node"])] = int(row["n"])
    since = dt.datetime.now() - dt.timedelta(hours=1)
    finished: dict[str, int] = {}
    for row in db.rows(queries.FINISHED_BY_NODE):
        done = row["datetime_complete"]
        done = done if isinstance(done, dt.datetime) else dt.datetime.fromisoformat(str(done))
        if done >= since:
            node = json.loads(row["node"])
            finished[node] = finished.get(node, 0) + 1
    return [_view(name, rec, running, finished, now) for name, rec in sorted(records.items())]


def _view(
    name: str, rec: dict[str, Any], running: dict[str, int], finished: dict[str, int], now: float
) -> NodeView:
    age = now - float(rec.get("beat", 0.0))
    if rec.get("state") == "left":
        state = "left"
    else:
        state = "alive" if age <= STALE_AFTER_S else "gone"
    started = float(rec.get("started", now))
    hours = min(1.0, max((now - started) / 3600.0, 1 / 60))
    return NodeView(
        name,
        state,
        str(rec.get("host", "?")),
        rec.get("pid"),
        rec.get("par"),
        list(rec.get("devices", [])),
        running.get(name, 0),
        round(finished.get(name, 0) / hours, 1),
        round(age, 1),
    )


def render_nodes(nodes: list[NodeView]) -> Table:
    from rich.table import Table

    table = Table(title="nodes", title_justify="left", expand=False)
    for column in ("node", "state", "host", "pid", "par", "GPUs", "running", "trials/h", "beat"):
        table.add_column(column)
    style = {"alive": "green", "left": "dim", "gone": "red"}
    for n in nodes:
        gpus = ", ".join(f"{d['label']} {d['capacity_mib'] / 1024:.0f} GiB" for d in n.devices)
        table.add_row(
            n.name,
            f"[{style[n.state]}]{n.state}[/]",
            n.host,
            str(n.pid or "-"),
            str(n.par or "-"),
            gpus or "-",
            str(n.running),
            f"{n.per_hour:g}",
            "-" if n.beat_age_s is None else f"{n.beat_age_s:.0f} s ago",
        )
    return table

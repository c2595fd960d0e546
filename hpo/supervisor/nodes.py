"""The study's nodes: each supervisor's record in the storage, its heartbeat, and stop requests.

Everything a second terminal or a second node needs goes through the study's storage (study
system attributes, Optuna's schema): each supervisor writes ``hpo:node:<name>`` — host, pid,
par, devices with their capacity, when it started, its last heartbeat and how many trials it
runs — and refreshes it every heartbeat interval. ``hpo stop`` writes ``hpo:stop`` (``drain`` or
``now``, with the time of the request); every supervisor that started before the request obeys
it, so a supervisor started later is not stopped by an old request.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpo.contract import NODE_PREFIX, STOP_ATTR
from hpo.devices import MIB

if TYPE_CHECKING:
    from hpo.devices import Device
    from hpo.storage import StudyStore
    from hpo.supervisor.signals import StopSignals

logger = logging.getLogger(__name__)

STOP_MODES = ("drain", "now")
_CHECK_STOP_EVERY_S = 2.0


def request_stop(store: StudyStore, mode: str) -> None:
    """Ask every supervisor of the study to stop: ``drain`` (running trials finish, no new
    ones) or ``now`` (running trials are interrupted with a reason)."""
    if mode not in STOP_MODES:
        raise ValueError(f"stop mode must be drain or now, got {mode!r}")
    store.set_study_attr(STOP_ATTR, {"mode": mode, "at": time.time(), "host": _host()})


class NodeRegistry:
    """This node's record in the study; :meth:`tick` keeps it fresh and obeys stop requests."""

    def __init__(
        self, store: StudyStore, name: str, devices: Sequence[Device], interval_s: float
    ) -> None:
        self._store = store
        self._key = NODE_PREFIX + name
        self.name = name
        self._interval_s = interval_s
        self._started = time.time()
        self._record: dict[str, Any] = {
            "host": _host(),
            "pid": os.getpid(),
            "devices": [
                {"label": d.label, "capacity_mib": round((d.capacity_bytes or 0) / MIB)}
                for d in devices
                if d.has_memory
            ],
            "started": self._started,
        }
        self._next_beat = 0.0
        self._next_stop_check = 0.0
        self._obeyed: float | None = None

    def register(self, par: int) -> None:
        """Join the study (and say so if this node's connections would not fit the server)."""
        from hpo.storage.connections import check_capacity

        warning = check_capacity(self._store.storage, self._store.url, par)
        if warning:
            logger.warning("%s", warning)
        self._record["par"] = par
        self._write(running=0, state="running")
        logger.info("node %r joined the study (pid %d)", self.name, os.getpid())

    def tick(self, running: int, signals: StopSignals) -> None:
        """Heartbeat every interval; a stop request newer than this node is obeyed."""
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self._interval_s
            self._write(running=running, state="running")
        if now >= self._next_stop_check:
            self._next_stop_check = now + _CHECK_STOP_EVERY_S
            self._check_stop(signals)

    def leave(self, running: int = 0) -> None:
        try:
            self._write(running=running, state="left")
        except Exception as e:  # the storage may be what ended the run
            logger.debug("could not record that node %r left: %s", self.name, e)

    def _write(self, running: int, state: str) -> None:
        record = {**self._record, "beat": time.time(), "running": running, "state": state}
        self._store.set_study_attr(self._key, record)

    def _check_stop(self, signals: StopSignals) -> None:
        request = self._store.study_attrs().get(STOP_ATTR)
        if not isinstance(request, dict):
            return
        at = float(request.get("at", 0.0))
        if at <= self._started or at == self._obeyed:
            return
        self._obeyed = at
        mode = str(request.get("mode"))
        logger.warning("stop requested from %s: %s", request.get("host", "?"), mode)
        signals.request(mode)


def _host() -> str:
    return socket.gethostname()

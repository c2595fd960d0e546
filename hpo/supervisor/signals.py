"""How the user stops a study: Ctrl-C once drains, twice (or SIGTERM) stops now."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class StopSignals:
    """Ctrl-C once: finish running trials, start no more. Twice, or SIGTERM: stop now.

    ``stop_at_first`` (the Python API, as Optuna's ``study.optimize`` and a notebook's
    interrupt): the first Ctrl-C stops now, and the running trials end interrupted.
    """

    def __init__(self, stop_at_first: bool = False) -> None:
        self.stop_at_first = stop_at_first
        self.interrupts = 0
        self.ctrl_c = False  # a SIGINT arrived (not a stop request)
        self.terminated = False
        self._previous: dict[int, Any] = {}

    @property
    def draining(self) -> bool:
        return self.interrupts >= 1

    def request(self, mode: str) -> None:
        """A stop requested through the storage (``hpo stop``): ``drain`` like one Ctrl-C,
        ``now`` like two."""
        self.interrupts = max(self.interrupts, 1)
        if mode == "now":
            self.terminated = True

    def stopping(self) -> bool:
        """Whether the user asked to stop at all (drain or now): start no more trials."""
        return self.draining or self.stop_now

    @property
    def stop_now(self) -> bool:
        return self.terminated or self.interrupts >= 2

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in ((signal.SIGINT, self._on_int), (signal.SIGTERM, self._on_term)):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_int(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        self.ctrl_c = True
        if self.stop_at_first:
            self.terminated = True
            logger.warning("interrupted: stopping now")
        elif self.interrupts == 1:
            logger.warning("interrupted: finishing running trials (Ctrl-C again to stop now)")
        else:
            logger.warning("interrupted again: stopping now")

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        logger.warning("terminated: stopping now")


def describe_exit(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL``."""
    if code is None:
        return "vanished"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == 75:  # hpo.execution.worker.STORAGE_EXIT (not imported: no torch path needed)
        return "lost the study's storage (exit code 75)"
    return f"exited with code {code}"

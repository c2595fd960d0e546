"""How much a trial may still grow once it settled: the headroom settling keeps.

A running trial settles when its device peak stopped growing (:mod:`hpo.execution.settle`: over
a whole report interval, or the later half of its first): from then on its reservation, and its
process's cap, is that peak times ``1 + frac``. ``frac`` starts at :data:`DEFAULT_FRAC`; each
settled trial that ends says how much it grew after settling (``settle_growth_frac``), and
``frac`` becomes half as much again as the largest growth seen, never below :data:`MIN_FRAC`. A
settled trial that runs out of memory (or past its cap) anyway means the rule does not hold for
this study: settling stops for the rest of the run (trials keep their admitted reservations, as with
``memory.settle=false``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr, EndReason
from hpo.devices import MIB
from hpo.execution.protocol import Settled
from hpo.scheduling.admission import DeviceBooks

if TYPE_CHECKING:
    from hpo.memory.gate import MemoryGate

logger = logging.getLogger(__name__)

DEFAULT_FRAC = 0.05  # growth allowed after settling before any settled trial was measured
MIN_FRAC = 0.02  # never less, however flat the measured peaks
_KNOWN = 10  # settled trials measured before the default no longer applies
_KEEP = 200  # the growths of this many recent settled trials are kept


class SettleModel:
    """The growth allowed after settling, learned from settled trials that ended."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._growth: deque[float] = deque(maxlen=_KEEP)

    def frac(self) -> float | None:
        """The fraction a settled trial may still grow; None when trials do not settle."""
        if not self.enabled:
            return None
        floor = MIN_FRAC if len(self._growth) >= _KNOWN else DEFAULT_FRAC
        return max(floor, 1.5 * max(self._growth, default=0.0))

    def observe(self, attrs: Mapping[str, Any]) -> None:
        """Learn from an ended trial's attributes (nothing unless it settled)."""
        settled = attrs.get(Attr.SETTLE_PEAK_VRAM_MIB)
        if not settled or not self.enabled:
            return
        if EndReason.of(attrs) in (EndReason.OOM, EndReason.CAP_EXCEEDED):
            self.enabled = False
            logger.warning(
                "a trial ran out of memory after it settled at %.0f MiB: trials no longer "
                "settle in this run (they keep what admission reserved)",
                float(settled),
            )
            return
        growth = attrs.get(Attr.SETTLE_GROWTH_FRAC)
        if growth is not None:
            self._growth.append(max(0.0, float(growth)))


def settle(
    books: DeviceBooks,
    message: Settled,
    gate: MemoryGate | None = None,
    params: Mapping[str, Any] | None = None,
) -> bool:
    """Shrink a running trial's reservation to what it holds now that it settled (the message
    counts its context); whether that freed memory (said in the log). With the trial's
    ``params`` (as it runs; None for a trial with a spike slot, whose held bytes leave out
    its spike), ``gate`` estimates its group's unmeasured trials from it until it ends."""
    number, held = message.trial_number, message.held_bytes
    freed = books.settle(number, max(0, held - books.context_bytes))
    if freed:
        logger.info("trial %d: settled at %.0f MiB, %.0f freed", number, held / MIB, freed / MIB)
        if gate is not None and params is not None:
            gate.settled(number, params, held)
    return freed > 0

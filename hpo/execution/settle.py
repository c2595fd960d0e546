"""Settling: a running trial gives back the memory its reservation held beyond its own peak.

Admission reserves a trial's *upper* estimate: the point plus the run-to-run noise and the fit's
uncertainty, or the whole device budget while its group was never measured. Once the trial has
trained a while, its own peak is known far better than any estimate: a training process reaches
its peak within the first steps and evaluation, and the caching allocator then holds it. So at
each report the runner compares the device peak with the one at the previous report; the first
time it did not grow over a whole report interval, the trial *settles*. At the first report,
with no report before it, the memory probe's samples stand in: a trial whose device memory
has not grown over the later half of its run so far (a start-up, then a steady first epoch)
settles there; one still growing near its first report waits for the second. A settled
trial's process is capped at that peak times ``1 + settle_frac`` plus the device's margin (a trial
that grows past it runs out of memory alone, never a neighbour), and a
:class:`~hpo.execution.protocol.Settled` message tells the supervisor, which shrinks the trial's
reservation to the same bytes and admits waiting trials into what was freed
(:mod:`hpo.scheduling.settle` learns ``settle_frac`` from how much settled trials still grew). A
trial whose declared spikes (:mod:`hpo.execution.spike`) have the device's spike slot settles its
steady memory (the peak outside spikes); its cap keeps room for the spike.

A trial resumed from its checkpoint does not settle: it reports its saved epochs again before
it trains, with no growth between those reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpo.contract import Attr
from hpo.devices import MIB
from hpo.execution.protocol import Assignment, Settled

if TYPE_CHECKING:
    from hpo.devices import Device

logger = logging.getLogger(__name__)

_GROWN = 1.001  # a peak this much above the previous report's grew (rounding aside)


class Settler:
    """Watches one trial's reports (``on_report``) and settles it once (see the module)."""

    def __init__(
        self,
        assignment: Assignment,
        measure: Callable[[], dict[str, Any]],
        device: Device,
        notify: Callable[[object], Any] | None,
        resumed: bool,
        record: Callable[[dict[str, Any]], Any] | None = None,
        grew_at: Callable[[], float | None] | None = None,
    ) -> None:
        """``measure()`` gives the trial's memory attributes so far (its declared spikes'
        peaks included); ``notify`` tells the supervisor (None: no one to tell, no settling);
        ``record(attrs)`` writes what settling decided on the running trial at once (``hpo
        status`` shows what it holds now); ``grew_at()`` when the device memory the probe
        samples last grew (monotonic; None: not known). Only a capped trial settles."""
        self._a, self._measure, self._device, self._notify = assignment, measure, device, notify
        self._record, self._grew_at = record, grew_at
        asked = assignment.settle_frac is not None and assignment.mem_cap_bytes is not None
        self._on = asked and notify is not None and not resumed and device.has_memory
        self._last: float | None = None  # what it held at the previous report (MiB)
        self._settled: float | None = None  # what it held when it settled (MiB)
        self._start = time.monotonic()
        self._attrs: dict[str, Any] = {}

    def _held_mib(self, attrs: dict[str, Any]) -> float | None:
        """The peak settling watches: outside declared spikes when they have a slot of their
        own on the device (the trial's steady memory), else the whole peak."""
        peak = attrs.get(Attr.PEAK_VRAM_MIB)
        return attrs.get(Attr.STEADY_VRAM_MIB, peak) if self._a.spike_bytes else peak

    def on_report(self, trial_id: int, step: int) -> None:
        if not self._on or trial_id != self._a.trial_id:
            return
        peak = self._held_mib(self._measure())
        last, self._last = self._last, peak
        if peak is None or (peak > last * _GROWN if last is not None else not self._flat()):
            return
        self._on = False
        frac = self._a.settle_frac
        assert frac is not None
        held = int(peak * MIB * (1 + frac))
        cap, limit = self._a.mem_cap_bytes, held + self._a.spike_bytes + self._a.cap_slack_bytes
        assert cap is not None and self._notify is not None  # else never on
        if limit >= cap:
            return  # it holds about what it reserved: nothing to give back
        self._device.cap_process(limit)
        self._settled = peak
        self._attrs = {
            Attr.SETTLE_PEAK_VRAM_MIB: round(peak, 1),
            Attr.VRAM_SETTLED_MIB: round((held + self._a.spike_bytes) / MIB, 1),
            Attr.SETTLED_AFTER_S: round(time.monotonic() - self._start, 3),
        }
        logger.debug("trial %d settles at %.0f MiB (step %d)", self._a.trial_number, peak, step)
        self._notify(Settled(self._a.trial_number, held))
        if self._record is not None:
            self._record(self._attrs)

    def _flat(self) -> bool:
        """At the first report: whether the sampled device memory did not grow over the later
        half of the trial so far."""
        grew = None if self._grew_at is None else self._grew_at()
        now = time.monotonic()
        return grew is not None and now - grew >= (now - self._start) / 2

    def attrs(self, final: dict[str, Any]) -> dict[str, Any]:
        """What settling records on the trial, given its final memory attributes: nothing if
        it did not settle; else the peak it settled at, what it held from then on, when, and
        how much it still grew (the same peak at the end over the one it settled at, less 1)."""
        if self._settled is None:
            return {}
        end = self._held_mib(final) or self._settled
        growth = max(0.0, end / self._settled - 1.0)
        return {**self._attrs, Attr.SETTLE_GROWTH_FRAC: round(growth, 4)}

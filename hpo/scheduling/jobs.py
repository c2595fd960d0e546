"""What a replay (:mod:`hpo.scheduling.replay`) runs and on what: jobs, policies, cards, and
the outcome it measures."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """One trial as it runs alone (bytes include its worker's context)."""

    params: Mapping[str, Any]
    peak_bytes: float
    reserve_bytes: float  # memory-aware admission's upper estimate
    setup_s: float  # before the first allocation (process, data, model)
    work_s: float  # after it, alone on the card
    demand: float = 0.0  # share of the card's compute while at work (0: not modelled)
    alloc_bytes: float | None = None  # held once allocated, outside declared spikes (the peak)
    # memory-aware: after this share of its work it settles (hpo.execution.settle) and its
    # reservation drops to settled_bytes; None: it keeps its reservation to the end
    settle_after: float | None = None
    settled_bytes: float = 0.0
    # the same configuration with twice the micro-batches (an objective that accumulates
    # gradients): asked next when this one runs out of memory at its first allocation, and
    # run instead of this one where it cannot fit a card alone; None: not retried
    retry: Job | None = None
    # hpo's gate knows its memory (a workload file's truth): what cannot fit a card alone is
    # split or pre-pruned before it runs, whatever the admission; False: replayed as it ran
    gate_knows: bool = False
    # the estimate's point (context included) where it is below ``reserve_bytes``, the upper:
    # what safe overcommit shades the reservation towards (None: no spread)
    point_bytes: float | None = None

    @property
    def steady_bytes(self) -> float:
        return self.peak_bytes if self.alloc_bytes is None else self.alloc_bytes


@dataclass(frozen=True)
class Policy:
    """``par`` workers, memory-blind (``parN``) or memory-aware (``par`` the cap): reserving
    each upper estimate (``auto``, ``memory.overcommit=false``) or under safe overcommit
    (``auto-oc``, :mod:`hpo.scheduling.overcommit`)."""

    par: int
    aware: bool
    overcommit: bool = False

    @property
    def name(self) -> str:
        if not self.aware:
            return f"par{self.par}"
        return "auto-oc" if self.overcommit else "auto"

    @classmethod
    def parse(cls, text: str, cap: int = 8) -> Policy:
        """``par1``, ``par2``, …, ``auto`` or ``auto-oc``; ValueError otherwise."""
        text = text.strip()
        if text in ("auto", "auto-oc"):
            return cls(cap, True, overcommit=text == "auto-oc")
        match = re.fullmatch(r"par([1-9][0-9]*)", text)
        if match is None:
            raise ValueError(f"a policy is parN (N >= 1), auto or auto-oc, got {text!r}")
        return cls(int(match.group(1)), False)


@dataclass(frozen=True)
class Cards:
    """The hardware to replay on: ``count`` cards of ``capacity_bytes``."""

    capacity_bytes: int
    count: int = 1
    context_bytes: int = 0
    margin_frac: float = 0.05


@dataclass(frozen=True)
class Start:
    """A trial a replay started: when, its number, which job, on which device and worker."""

    at_s: float
    number: int
    job: int
    device: int | None
    worker: int


class Step(str, enum.Enum):
    """What a replay does at a moment, as the supervisor would (see :class:`Event`)."""

    OFFER = "offer"  # it offers the waiting trials, in the backlog's order
    ASK = "ask"  # a new trial is asked (a job, with its reservation) and offered
    END = "end"  # a running trial ended: finished (its duration is learned), or out of memory


@dataclass(frozen=True)
class Event:
    """One step of a replay, in order: what drives admission (a test drives the supervisor's
    dispatch with the same events and compares the starts)."""

    step: Step
    at_s: float
    number: int = -1  # the trial asked or ended
    job: int = -1  # asked: which job
    reserve_bytes: float = 0.0  # asked: its reservation (an upper estimate)
    duration_s: float | None = None  # ended: its duration, if it finished
    point_bytes: float = 0.0  # asked: its estimate's point (0: the reservation)
    lost_s: float | None = None  # ended over its cap (safe overcommit): the seconds it lost


@dataclass(frozen=True)
class Outcome:
    """What a replay measured: finished trials, wall seconds, OOMs, pre-pruned draws; every
    start and every event, in order."""

    finished: int
    wall_s: float
    ooms: int
    pre_pruned: int
    starts: list[Start] = field(default_factory=list, compare=False, repr=False)
    events: list[Event] = field(default_factory=list, compare=False, repr=False)
    cap_hits: int = 0  # trials over their cap under safe overcommit (re-queued at once)

    @property
    def per_hour(self) -> float:
        return 3600.0 * self.finished / self.wall_s if self.wall_s > 0 else 0.0


def summarise(outcomes: Mapping[str, Outcome]) -> dict[str, dict[str, float]]:
    """Outcomes as plain numbers for JSON."""
    return {
        name: {
            "finished": o.finished,
            "wall_s": round(o.wall_s, 1) if math.isfinite(o.wall_s) else -1.0,
            "trials_per_hour": round(o.per_hour, 1),
            "ooms": o.ooms,
            "cap_hits": o.cap_hits,
            "pre_pruned": o.pre_pruned,
        }
        for name, o in outcomes.items()
    }

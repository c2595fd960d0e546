"""How a trial ended: the end reasons of DESIGN.md and the message a worker sends back."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState


class EndReason(str, enum.Enum):
    """Why a trial ended; stored as the ``end_reason`` user attribute."""

    COMPLETE = "complete"
    PRUNED = "pruned"  # by the pruner at a rung
    MEMORY_ESTIMATE = "memory_estimate"  # pre-pruned before launch
    OOM = "oom"
    CUDA_ERROR = "cuda_error"
    WORKER_DIED = "worker_died"
    TIMEOUT = "timeout"
    ERROR = "error"  # an exception in the objective
    INTERRUPTED = "interrupted"  # the user stopped the study while the trial ran

    @property
    def state(self) -> TrialState:
        if self is EndReason.COMPLETE:
            return TrialState.COMPLETE
        if self in (EndReason.PRUNED, EndReason.MEMORY_ESTIMATE):
            return TrialState.PRUNED
        return TrialState.FAIL

    @property
    def poisons_worker(self) -> bool:
        """A CUDA error leaves the process's CUDA context unusable: the worker must exit."""
        return self is EndReason.CUDA_ERROR


@dataclass
class Assignment:
    """Supervisor → worker: run this trial."""

    trial_id: int
    trial_number: int
    checkpoint_dir: str | None = None  # the trial's checkpoint directory (a retry's is inherited)
    device: str | None = None  # where admission placed it ("cuda:1", "sim:0"); None: default
    mem_cap_bytes: int | None = None  # its process's limit on that device, context included


@dataclass
class Outcome:
    """Worker → supervisor: how a trial ended and what it measured."""

    trial_number: int
    end_reason: EndReason
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # user attributes to record
    message: str | None = None  # one line for the log (error summary)


@dataclass
class Ready:
    """Worker → supervisor: the objective imported; waiting for assignments."""

    pid: int


@dataclass
class Fatal:
    """Worker → supervisor: the worker cannot run trials at all (e.g. objective import failed)."""

    message: str

"""The messages between the supervisor and a worker: an assignment to run a trial, and how the
trial ended (an :class:`~hpo.contract.EndReason` with what the runner measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hpo.contract import EndReason


@dataclass
class Assignment:
    """Supervisor → worker: run this trial."""

    trial_id: int
    trial_number: int
    checkpoint_dir: str | None = None  # the trial's checkpoint directory (a retry's is inherited)
    device: str | None = None  # where admission placed it ("cuda:1", "sim:0"); None: default
    mem_cap_bytes: int | None = None  # its process's limit on that device, context included
    accum_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    micro_batch: int | None = None  # the batch of one micro-step (None: not split)


@dataclass
class Outcome:
    """Worker → supervisor: how a trial ended and what it measured."""

    trial_number: int
    end_reason: EndReason
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # user attributes to record
    message: str | None = None  # one line for the log (error summary)
    leaking: str | None = None  # why the worker should be replaced (memory grew across trials)


@dataclass
class Ready:
    """Worker → supervisor: the objective imported; waiting for assignments."""

    pid: int


@dataclass
class Fatal:
    """Worker → supervisor: the worker cannot run trials at all (e.g. objective import failed)."""

    message: str

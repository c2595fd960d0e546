"""The messages between the supervisor and a worker: an assignment to run a trial, and how the
trial ended (an :class:`~hpo.contract.EndReason` with what the runner measured)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.contract import EndReason

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


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
    # Settling (hpo.execution.settle): once its peak stops growing (between reports), the
    # trial holds its peak times 1 + settle_frac, under a cap that much plus spike_bytes (the
    # spike slot it has on the device; its steady peak is watched then) plus cap_slack_bytes;
    # None: it keeps its reservation to the end.
    settle_frac: float | None = None
    cap_slack_bytes: int = 0
    spike_bytes: int = 0


@dataclass
class Outcome:
    """Worker → supervisor: how a trial ended and what it measured.

    A trial that completed or was pruned is ended in the storage by the worker itself (its
    attributes, then ``tell``), as Optuna's own workers do, so the supervisor's serial work per
    trial stays small; ``ended`` then carries the result. Any other end (an error, an OOM, a
    worker that died) the supervisor records, retries and explains.
    """

    trial_number: int
    end_reason: EndReason
    value: float | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # user attributes to record
    message: str | None = None  # one line for the log (error summary)
    leaking: str | None = None  # why the worker should be replaced (memory grew across trials)
    ended: FrozenTrial | None = None  # the trial as the worker ended it (None: not ended yet)


@dataclass
class Settled:
    """Worker → supervisor, while a trial runs: its peak stopped growing; it now holds at most
    ``held_bytes`` on its device (context included), under a cap to match."""

    trial_number: int
    held_bytes: int


@dataclass
class Propose:
    """Supervisor → idle worker: ask the study for its next trial, claiming one of ``target``
    slots, and propose it (see :mod:`hpo.execution.proposer`)."""

    target: int  # study.n_trials: slots are claimed against it in the storage
    owner: dict[str, Any]  # the supervisor's owner attributes (see hpo.supervisor.liveness)
    gate: bytes | None = None  # a newer memory gate for the sampler, pickled (None: unchanged)


@dataclass
class AskedTrial:
    """What the supervisor needs of an asked trial to decide on it."""

    number: int
    params: dict[str, Any]
    user_attrs: dict[str, Any]  # an enqueued retry's (its micro-batches, checkpoint directory)


@dataclass
class Proposal:
    """Worker → supervisor: the trial it asked, RUNNING and owned by the supervisor; None when
    every slot of the study is claimed (or ``error`` says why it could not ask)."""

    trial: AskedTrial | None
    trial_id: int = -1
    error: str | None = None


@dataclass
class Ready:
    """Worker → supervisor: the objective imported; waiting for assignments."""

    pid: int


@dataclass
class Fatal:
    """Worker → supervisor: the worker cannot run trials at all (e.g. objective import failed)."""

    message: str

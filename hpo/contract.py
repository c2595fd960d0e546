"""The names other tools depend on: per-trial user-attribute keys and end reasons.

``hpo stats``, its SQL in ``docs/sql.md``, the dashboard, the report and users' own queries
read these names from the study's storage, so they are spelled once, here, and every module
uses the constants instead of string literals (docs/architecture.md, "Contracts").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from optuna.trial import TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards study.n_trials
UNLIMITED_TRIALS = 2**31 - 1  # the target of a run without n_trials (hpo.optimize: until stopped)


class EndReason(str, enum.Enum):
    """Why a trial ended; stored as the ``end_reason`` user attribute."""

    COMPLETE = "complete"
    PRUNED = "pruned"  # by the pruner at a rung
    MEMORY_ESTIMATE = "memory_estimate"  # pre-pruned before launch
    OOM = "oom"
    # it needed more than its own per-process cap under safe overcommit, though it fits what
    # a trial may hold: re-queued at once with what it measured (never a failure of the study)
    CAP_EXCEEDED = "cap_exceeded"
    CUDA_ERROR = "cuda_error"
    WORKER_DIED = "worker_died"
    TIMEOUT = "timeout"
    ERROR = "error"  # an exception in the objective
    INTERRUPTED = "interrupted"  # the user stopped the study while the trial ran

    @property
    def state(self) -> TrialState:
        """The Optuna state a trial that ended this way is told with."""
        if self is EndReason.COMPLETE:
            return TrialState.COMPLETE
        if self in (EndReason.PRUNED, EndReason.MEMORY_ESTIMATE):
            return TrialState.PRUNED
        return TrialState.FAIL

    @property
    def poisons_worker(self) -> bool:
        """A CUDA error leaves the process's CUDA context unusable: the worker must exit."""
        return self is EndReason.CUDA_ERROR

    @property
    def measured(self) -> bool:
        """Whether the trial ran its course, so its peaks and duration describe its params."""
        return self in (EndReason.COMPLETE, EndReason.PRUNED)

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> EndReason | None:
        """The end reason recorded in a trial's user attributes (None: none, or not hpo's)."""
        try:
            return cls(attrs.get(Attr.END_REASON))
        except ValueError:
            return None

    @classmethod
    def measured_in(cls, attrs: Mapping[str, Any]) -> bool:
        """Whether the trial these user attributes describe ran its course (measured)."""
        reason = cls.of(attrs)
        return reason is not None and reason.measured


# Infrastructure failures: they say nothing about the parameters, so they may be retried.
RETRYABLE = (EndReason.WORKER_DIED, EndReason.CUDA_ERROR, EndReason.TIMEOUT)


class Attr:
    """User-attribute keys of a trial (values are JSON: numbers, strings, lists)."""

    END_REASON = "end_reason"  # an EndReason value
    ERROR = "error"  # last lines of the traceback, or what ended the trial
    DEVICE = "device"  # cuda:N, cpu or sim:N
    DURATION_S = "duration_s"  # wall seconds in the runner
    WORKER_PID = "worker_pid"
    # measured peaks (MiB); the VRAM keys only where there is device memory, never a fake 0
    PEAK_RSS_MIB = "peak_rss_mib"  # worker and all its children
    PEAK_VRAM_MIB = "peak_vram_mib"  # the trial's device footprint (NVML, or reserved)
    PEAK_VRAM_ALLOCATED_MIB = "peak_vram_allocated_mib"
    PEAK_VRAM_RESERVED_MIB = "peak_vram_reserved_mib"
    STEADY_VRAM_MIB = "steady_vram_mib"  # the peak outside declared spikes (hpo.memory_spike)
    SPIKE_VRAM_MIB = "spike_vram_mib"  # the most a declared spike added to what was held
    SPIKE_WAIT_S = "spike_wait_s"  # seconds waited for other trials' spikes on the device
    # the memory gate's estimate at admission (MiB) and what it was held against
    EST_VRAM_MIB = "est_vram_mib"
    EST_VRAM_UPPER_MIB = "est_vram_upper_mib"
    EST_SOURCE = "est_source"
    EST_N_MEASURED = "est_n_measured"
    VRAM_BUDGET_MIB = "vram_budget_mib"
    VRAM_RESERVED_MIB = "vram_reserved_mib"  # admission's reservation, context included
    # Settling (hpo.execution.settle): the peak when it stopped growing (outside spikes that
    # had a slot), what the trial held from then on (context and spike slot included, as in
    # vram_reserved_mib), when (s after its start), and how much that peak still grew after
    SETTLE_PEAK_VRAM_MIB = "settle_peak_vram_mib"
    VRAM_SETTLED_MIB = "vram_settled_mib"
    SETTLED_AFTER_S = "settled_after_s"
    SETTLE_GROWTH_FRAC = "settle_growth_frac"
    ADMIT_WAIT_S = "admit_wait_s"  # seconds the trial waited for memory
    MICRO_BATCH = "micro_batch"  # the batch one step holds (gradient accumulation)
    ACCUM_STEPS = "accum_steps"  # micro-batches per optimizer step (1: the whole batch)
    BRACKET = "bracket"  # Hyperband bracket of the trial
    # retries and checkpoints
    RETRY_OF = "retry_of"  # number of the trial this one repeats
    RETRY_KIND = "retry_kind"  # "accumulation" or "halved_batch" after OOM; "cap_exceeded"
    CAP_NEED_MIB = "cap_need_mib"  # a re-queued cap hit: what its original measured it needs
    ATTEMPT = "attempt"  # 2 for the first retry, 3 for the next, ...
    CHECKPOINT_DIR = "checkpoint_dir"
    RESUMED_FROM_EPOCH = "resumed_from_epoch"
    # who runs a trial (see hpo.supervisor.liveness)
    HOST = "host"
    SUPERVISOR_PID = "supervisor_pid"
    NODE_ID = "node_id"  # the node's name in the study (--node-id, HPO_NODE_ID, host name)
    PID_NAMESPACE = "pid_namespace"  # boot and PID namespace: where supervisor_pid means one


class Decision(str, enum.Enum):
    """What admission decides for an asked trial; the log line of each names it
    (``trial 12: admit (fits sim:0: ...)``)."""

    ADMIT = "admit"  # start it now (the gate: it may be placed)
    WAIT = "wait"  # it fits some device, not now: it waits in the backlog
    PRE_PRUNE = "pre_prune"  # it can never fit: PRUNED with end_reason=memory_estimate


# Study system attributes the supervisor writes when a run starts (read by `hpo status`):
# the run's target (study.n_trials) and how many trials were finished before it started.
RUN_TARGET_ATTR = "hpo:run_n_trials"
RUN_BASE_ATTR = "hpo:run_finished_before"

# Study system attributes of the control plane: each node of the study (a JSON record under
# NODE_PREFIX + its name) and a stop request any terminal may write.
NODE_PREFIX = "hpo:node:"
STOP_ATTR = "hpo:stop"

# The constraint name under which a pre-pruned trial is reported infeasible to the sampler.
MEMORY_CONSTRAINT = "memory"

# Study system attribute of a study that declares no search space: the space learned from its
# objective's trial.suggest_* calls ({name: Optuna distribution JSON}; hpo.execution.learned_space).
LEARNED_SPACE_ATTR = "hpo:learned_space"

"""The simulated objective: a trial that holds, waits and learns as its workload file says.

It runs on a simulated card (``study.device=sim``). First it spends the family's ``setup_s``
(process, data, model: a trial that then runs out of memory has spent it too); then it
allocates its true peak (with the workload's run-to-run noise) in two steps, like weights then
the first batch's activations, so an OOM comes from the card exactly as a CUDA OOM would. Each
epoch takes the family's time, scaled by ``study.time_scale`` and stretched by contention on
the card; its last ``eval_s`` evaluate, holding ``eval_extra_gib`` more (released after), so a
neighbour that fit the training peak can still run out of memory mid-trial and lose its
epochs. Then it reports the family's learning curve to the pruner, with the curve's validation
noise seeded by the trial's number.

It accumulates gradients: run with ``k`` micro-batches (``hpo.current_context()``), it holds
the memory of the micro-batch and learns exactly as with the whole batch; its steps use the
card less (the family's demand at the micro-batch), so an epoch of the same GPU work takes
longer: ``demand(batch) / demand(micro-batch)`` times.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from hpo.config.schema import StudyConf
from hpo.devices.simulated import SimulatedGpu
from hpo.execution.context import current_context
from hpo.execution.spike import memory_spike
from hpo.sim.workload import load_workload

if TYPE_CHECKING:
    from omegaconf import DictConfig

GPU_SECONDS_ATTR = "sim_gpu_s"  # compute the trial did: its demand × its work, wall seconds
_SLICE_S = 0.02  # contention is re-read this often while an epoch runs (wall seconds)


@dataclass
class SimulatedStudyConf(StudyConf):
    """A study of a simulated workload on a simulated card (``device: sim``)."""

    workload: str = "criteria24"  # a built-in workload's name, or a file (docs/workloads.md)
    time_scale: float = 0.01  # wall seconds per simulated second (0.01: 100× faster)


def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
    """Hold the trial's memory, run its epochs, report its curve; return the best value."""
    study = cfg.study
    ctx = current_context()
    gpu = ctx.handle
    if not isinstance(gpu, SimulatedGpu):
        raise RuntimeError(f"the simulated objective needs study.device=sim, got {study.device!r}")
    wl = load_workload(str(study.workload))
    params = trial.params
    run = dict(params)  # what one step holds: the micro-batch when accumulating
    if ctx.accum_steps > 1 and ctx.micro_batch:
        run[str(study.memory.batch_param)] = ctx.micro_batch
    family = wl.family(params)
    peak = wl.peak_bytes(run, seed=trial.number)
    scale = float(study.time_scale)
    time.sleep(family.setup_s * scale)  # process, data and model before the first allocation
    extra, eval_s = wl.eval_extra_bytes(run), family.eval_s * scale
    try:
        gpu.allocate(peak // 3)  # weights, gradients and optimizer state
        gpu.set_demand(family.demand.value(run))
        gpu.allocate(peak - peak // 3)  # activations of the first batch: the peak
        # the same GPU work per epoch, at the micro-batch's lower utilisation
        demand = min(1.0, family.demand.value(run))
        stretch = min(1.0, family.demand.value(params)) / demand
        best, work_s = 0.0, family.epoch_s * scale * stretch
        for epoch in range(1, int(study.epochs) + 1):
            _run_epoch(gpu, work_s - eval_s)
            spike = memory_spike(extra) if family.eval_spike else contextlib.nullcontext()
            with spike:
                if extra:
                    gpu.allocate(extra)  # the evaluation's buffers, beside the training state
                _run_epoch(gpu, eval_s)
                if extra:
                    gpu.release(extra)
            value = family.curve.value(params, epoch, seed=trial.number)
            best = max(best, value)
            trial.report(value, epoch)
            if epoch < study.epochs and trial.should_prune():
                trial.set_user_attr(GPU_SECONDS_ATTR, round(demand * work_s * epoch, 4))
                raise optuna.TrialPruned()
        trial.set_user_attr(GPU_SECONDS_ATTR, round(demand * work_s * int(study.epochs), 4))
        return best
    finally:
        gpu.set_demand(0.0)
        gpu.release()


def _run_epoch(gpu: SimulatedGpu, work_s: float) -> None:
    """Do ``work_s`` seconds of work, slowed down while the card is oversubscribed.

    Progress is measured on the clock (time slept and time spent reading the card both
    count), so an epoch alone on the card takes ``work_s``, not ``work_s`` plus overheads.
    """
    done = 0.0
    last = time.monotonic()
    while done < work_s:
        slowdown = gpu.slowdown()
        time.sleep(max(0.0, min(_SLICE_S, (work_s - done) * slowdown)))
        now = time.monotonic()
        done += (now - last) / slowdown
        last = now

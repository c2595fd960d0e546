"""Injected faults: make a trial fail the way real GPU training jobs fail, on any machine.

Used by the ``toy`` study's knobs and by ``bench/faults.py``. Each trial draws at most one fault
from its number (reproducible, and a retry, having a new number, draws again):

- ``oom``: raises an ``OutOfMemoryError`` saying "CUDA out of memory" (end_reason ``oom``);
- ``cuda_error``: raises "CUDA error: device-side assert triggered" (``cuda_error``; the
  worker exits afterwards as after a real one);
- ``segfault``: the worker kills itself with SIGSEGV (``worker_died``);
- ``hang``: sleeps, so the supervisor's trial time limit ends it (``timeout``).
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Fault(str, enum.Enum):
    """A fault to inject into one trial."""

    NONE = "none"
    OOM = "oom"
    CUDA_ERROR = "cuda_error"
    SEGFAULT = "segfault"
    HANG = "hang"


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.cuda.OutOfMemoryError`` (the runner matches it by name)."""


def draw_fault(trial_number: int, rates: Mapping[Fault, float]) -> Fault:
    """The fault of a trial: one uniform draw from its number against the cumulative rates."""
    total = sum(rates.values())
    if total > 1.0:
        raise ValueError(f"fault rates must add up to at most 1, got {total:g}")
    u = random.Random(f"hpo-fault-{trial_number}").random()
    for fault, rate in rates.items():
        if u < rate:
            return fault
        u -= rate
    return Fault.NONE


def inject(fault: Fault, trial_number: int, hang_s: float = 600.0) -> None:
    """Make the fault happen now (returns only for ``NONE``, or after a hang)."""
    if fault is Fault.NONE:
        return
    logger.info("injecting %s into trial %d", fault.value, trial_number)
    if fault is Fault.OOM:
        raise OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (injected in trial {trial_number})"
        )
    if fault is Fault.CUDA_ERROR:
        raise RuntimeError(
            f"CUDA error: device-side assert triggered (injected in trial {trial_number})"
        )
    if fault is Fault.SEGFAULT:
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(10)  # the signal is delivered before this ends
    if fault is Fault.HANG:
        time.sleep(hang_s)

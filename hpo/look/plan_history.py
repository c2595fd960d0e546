"""Reading a study's history for ``hpo plan`` (:mod:`hpo.look.plan`): what each trial held,
took and would have needed, and the gap between trials."""

from __future__ import annotations

import bisect
import datetime as dt
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from hpo.memory.micro import split
from hpo.scheduling.replay import Job

MIB = 1024**2


class Known:
    """Peaks and durations of the trials that ran, by configuration and by memory group: what
    a configuration that ran out of memory would have needed and taken."""

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = tuple(groups)
        self._peaks: dict[tuple[Any, ...], float] = {}
        self._seconds: dict[tuple[Any, ...], list[float]] = defaultdict(list)

    def add(self, params: Mapping[str, Any], peak: float, seconds: float | None) -> None:
        key = config_key(params)
        self._peaks[key] = max(self._peaks.get(key, 0.0), peak)
        for k in (key, self._group(params), ()):
            self._seconds[k].append(seconds or 0.0)

    def peak(self, params: Mapping[str, Any]) -> float:
        return self._peaks.get(config_key(params), 0.0)

    def seconds(self, params: Mapping[str, Any]) -> float:
        for k in (config_key(params), self._group(params), ()):
            if self._seconds.get(k):
                return statistics.median(self._seconds[k])
        return 0.0

    def _group(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return ("group", *(params.get(g) for g in self._groups))


def config_key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return ("params", *sorted(params.items()))


def external(value: float, distribution_json: str) -> Any:
    from optuna.distributions import json_to_distribution

    return json_to_distribution(distribution_json).to_external_repr(value)


def time_of(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def seconds_of(trial: Mapping[str, Any], attrs: Mapping[str, Any]) -> float | None:
    """The trial's wall time from its start to its end, less what it waited for memory (the
    runner's own ``duration_s`` leaves out the worker's time around it); None if unknown."""
    if trial["datetime_start"] and trial["datetime_complete"]:
        span = time_of(trial["datetime_complete"]) - time_of(trial["datetime_start"])
        waited = attrs.get("admit_wait_s")
        return span.total_seconds() - (float(waited) if isinstance(waited, (int, float)) else 0)
    if isinstance(attrs.get("duration_s"), (int, float)):
        return float(attrs["duration_s"])
    return None


def gap_between(
    ended: Sequence[Mapping[str, Any]], attrs: Mapping[int, Mapping[str, Any]]
) -> float:
    """The time from a trial's end to the next dispatch (its start plus what it waited for
    memory), its lower quartile: what the supervisor and a worker spend between trials."""
    ends = sorted(time_of(t["datetime_complete"]) for t in ended)
    gaps = []
    for t in ended:
        waited = attrs[t["trial_id"]].get("admit_wait_s")
        wait = dt.timedelta(seconds=float(waited) if isinstance(waited, (int, float)) else 0.0)
        dispatch = time_of(t["datetime_start"]) + wait
        before = bisect.bisect_right(ends, dispatch)
        if before:
            gaps.append((dispatch - ends[before - 1]).total_seconds())
    # the lower quartile: a dispatch long after the latest end waited for memory, not for hpo
    return statistics.quantiles(gaps, n=4)[0] if len(gaps) >= 4 else min(gaps, default=0.0)


def settling(job: Job, attrs: Mapping[str, Any]) -> Job:
    """``job`` settling as the trial did (``settled_after_s``, ``vram_settled_mib``), if it did."""
    after, held = attrs.get("settled_after_s"), attrs.get("vram_settled_mib")
    if not isinstance(after, (int, float)) or not isinstance(held, (int, float)) or job.work_s <= 0:
        return job
    share = min(1.0, max(0.0, (float(after) - job.setup_s) / job.work_s))
    return replace(job, settle_after=share, settled_bytes=float(held) * MIB)


def retry_tail(
    job: Job,
    params: Mapping[str, Any],
    steps: int,
    most: int,
    batch: str,
    size: Callable[[Mapping[str, Any]], tuple[float, float, float] | None],
) -> Job:
    """``job`` (run as ``steps`` micro-batches of ``params``' batch) with the retries hpo would
    ask after it ran out of memory, each with twice the micro-batches up to ``most``, where
    the history has none: ``size(run)`` gives a retry's (peak, reservation, seconds), None
    where nothing tells."""
    steps *= 2
    run = split(params, batch, steps) if steps <= most and batch in params else None
    sized = size(run) if run is not None else None
    if sized is None:
        return job
    peak, reserve, seconds = sized
    setup = min(job.setup_s, seconds)
    retry = Job(job.params, peak, reserve, setup, seconds - setup)
    return replace(job, retry=retry_tail(retry, params, steps, most, batch, size))

"""``hpo plan``: what a study would cost on other cards, card counts and policies.

Each scenario is a replay of admission as events (:mod:`hpo.scheduling.replay`): no process
starts and nothing is written. The trials come from one of two places.

- **The study's own history** (the default): its trials in the order they were drawn. One
  that ran to a result is a job with its measured peak (context included), the reservation hpo
  gave it (``vram_reserved_mib``; else its upper estimate plus a context; else its peak +
  10 %) and its measured duration; one that ran out of memory needed at least its peak plus
  the failed request, or what the same configuration measured when it ran, and would have
  taken as long as that configuration (else its memory group) took. What an OOM costs (the
  start-up before the first allocation) is the median duration of the study's own OOM trials,
  or ``--setup-s``; a worker's gap between trials is the lower quartile of those measured.
  Durations are replayed as measured, under the contention of the policy that ran: another
  policy neither slows nor speeds them, so a plan for a denser policy is optimistic. A trial
  that declared spikes takes its steady memory (``steady_vram_mib``) at its first allocation;
  one that settled (``settled_after_s``, ``vram_settled_mib``) settles as it did under
  memory-aware admission (a history without settling plans ``auto`` without it).
- **A workload file** (``--workload``): ``--jobs`` configurations drawn from its space (seeded),
  each with its true peak and one noise draw, its evaluation memory and the context;
  memory-aware admission reserves the worst noise (what hpo's estimator converges to) and
  each trial settles at its peak plus 5 % after its first epoch (its second where memory
  still grows late in the first: an evaluation's extra, a start-up longer than an epoch);
  start-up, work (every epoch, no pruning) and compute demand come from the file.

For each scenario it reports trials per hour, OOMs, configurations pre-pruned, and hours to
the target (``n_trials`` from zero; from a study, also what is left from where it stands).
Not modelled: micro-batching (a configuration that cannot fit a card whole counts as
pre-pruned there, where hpo would run it as micro-batches), and a spike's own timing (the
reservations are what hpo recorded; on a workload file a trial holds its whole peak).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hpo.contract import RUN_TARGET_ATTR
from hpo.errors import ConfigError
from hpo.look import queries
from hpo.look.db import StudyDB
from hpo.memory.oom import needed_lower_bound
from hpo.scheduling.replay import Cards, Job, Outcome, Policy, replay
from hpo.scheduling.settle import DEFAULT_FRAC

MIB, GIB = 1024**2, 1024**3
_RAN = ("complete", "pruned")


@dataclass(frozen=True)
class Trials:
    """Jobs to replay and what the place they came from says about the hardware and timing."""

    jobs: list[Job]
    gap_s: float  # a worker's idle time between trials
    capacity_bytes: int | None  # the card they ran on, when known
    count: int  # cards they ran on
    context_bytes: int
    finished: int = 0  # trials already finished (a study)
    measured: Outcome | None = None  # the study as it ran
    target: int | None = None  # the n_trials of its latest run, where recorded


@dataclass(frozen=True)
class Row:
    """One scenario's result."""

    card_gib: float
    cards: int
    policy: str
    outcome: Outcome
    target: int
    finished: int

    @property
    def hours(self) -> float:
        return self.outcome.wall_s / 3600.0

    @property
    def hours_left(self) -> float:
        left = max(0, self.target - self.finished)
        rate = self.outcome.per_hour
        return left / rate if rate > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        o = self.outcome
        return {
            "card_gib": self.card_gib,
            "cards": self.cards,
            "policy": self.policy,
            "trials_per_hour": round(o.per_hour, 1),
            "ooms": o.ooms,
            "pre_pruned": o.pre_pruned,
            "hours_to_target": _finite(self.hours),
            "hours_left": _finite(self.hours_left),
        }


def _finite(hours: float) -> float | None:
    return round(hours, 2) if math.isfinite(hours) else None


def from_study(
    db: StudyDB,
    margin_frac: float,
    context_bytes: int,
    setup_s: float | None = None,
    groups: Sequence[str] = (),
) -> Trials:
    """The trials of ``db``'s study as jobs, in the order they were drawn (module docstring)."""
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in db.rows(queries.PLAN_ATTRS):
        attrs[r["trial_id"]][r["key"]] = json.loads(r["value_json"])
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in db.rows(queries.PLAN_PARAMS):
        params[r["trial_id"]][r["param_name"]] = _external(r["param_value"], r["distribution_json"])
    trials = db.rows(queries.PLAN_TRIALS)
    reason = {t["trial_id"]: attrs[t["trial_id"]].get("end_reason") for t in trials}
    ran = [t for t in trials if reason[t["trial_id"]] in _RAN]
    ran = [t for t in ran if _seconds(t, attrs[t["trial_id"]]) is not None]
    if not ran:
        raise ConfigError(f"study {db.ref.name!r} has no trial that ran to a result to replay")
    ooms = [t for t in trials if reason[t["trial_id"]] == "oom"]
    if setup_s is None:
        lost = [s for t in ooms if (s := _seconds(t, attrs[t["trial_id"]])) is not None]
        setup_s = statistics.median(lost) if lost else 0.0
    known = _Known(groups)
    for t in ran:
        a = attrs[t["trial_id"]]
        known.add(params[t["trial_id"]], float(a.get("peak_vram_mib") or 0.0) * MIB, _seconds(t, a))
    jobs = []
    for t in sorted([*ran, *ooms], key=lambda t: int(t["number"])):
        a, p = attrs[t["trial_id"]], params[t["trial_id"]]
        if reason[t["trial_id"]] == "oom":  # it never ran: what it needed at least, as the others
            seen = a.get("peak_vram_mib")
            bound = needed_lower_bound(None if seen is None else float(seen) * MIB, a.get("error"))
            peak, seconds = max(bound or 0.0, known.peak(p)), known.seconds(p)
        else:
            peak, seconds = float(a.get("peak_vram_mib") or 0.0) * MIB, _seconds(t, a) or 0.0
        if a.get("vram_reserved_mib") is not None:
            reserve = float(a["vram_reserved_mib"]) * MIB
        elif a.get("est_vram_upper_mib") is not None:
            reserve = float(a["est_vram_upper_mib"]) * MIB + context_bytes
        else:
            reserve = peak * 1.1
        setup = min(setup_s, seconds)
        steady = a.get("steady_vram_mib")  # outside its declared spikes
        alloc = float(steady) * MIB if isinstance(steady, (int, float)) else None
        job = Job(p, peak, reserve, setup, seconds - setup, alloc_bytes=alloc)
        jobs.append(_settling(job, a))
    budgets = [float(a["vram_budget_mib"]) for a in attrs.values() if "vram_budget_mib" in a]
    capacity = int(max(budgets) * MIB / (1 - margin_frac)) if budgets else None
    devices = {a.get("device") for a in attrs.values() if a.get("device")}
    ended = [t for t in trials if t["datetime_start"] and t["datetime_complete"]]
    start = min(_time(t["datetime_start"]) for t in ended)
    wall = (max(_time(t["datetime_complete"]) for t in ended) - start).total_seconds()
    measured = Outcome(len(ran), wall, len(ooms), 0)
    run = {r["key"]: json.loads(r["value_json"]) for r in db.rows(queries.RUN_ATTRS)}
    target = run.get(RUN_TARGET_ATTR)
    return Trials(
        jobs,
        _gap(ended, attrs),
        capacity,
        max(1, len(devices)),
        context_bytes,
        finished=len(ran),
        measured=measured,
        target=int(target) if isinstance(target, int) else None,
    )


class _Known:
    """Peaks and durations of the trials that ran, by configuration and by memory group: what
    a configuration that ran out of memory would have needed and taken."""

    def __init__(self, groups: Sequence[str]) -> None:
        self._groups = tuple(groups)
        self._peaks: dict[tuple[Any, ...], float] = {}
        self._seconds: dict[tuple[Any, ...], list[float]] = defaultdict(list)

    def add(self, params: Mapping[str, Any], peak: float, seconds: float | None) -> None:
        key = _key(params)
        self._peaks[key] = max(self._peaks.get(key, 0.0), peak)
        for k in (key, self._group(params), ()):
            self._seconds[k].append(seconds or 0.0)

    def peak(self, params: Mapping[str, Any]) -> float:
        return self._peaks.get(_key(params), 0.0)

    def seconds(self, params: Mapping[str, Any]) -> float:
        for k in (_key(params), self._group(params), ()):
            if self._seconds.get(k):
                return statistics.median(self._seconds[k])
        return 0.0

    def _group(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return ("group", *(params.get(g) for g in self._groups))


def _key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return ("params", *sorted(params.items()))


def _external(value: float, distribution_json: str) -> Any:
    from optuna.distributions import json_to_distribution

    return json_to_distribution(distribution_json).to_external_repr(value)


def _time(value: Any) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _seconds(trial: Mapping[str, Any], attrs: Mapping[str, Any]) -> float | None:
    """The trial's wall time from its start to its end, less what it waited for memory (the
    runner's own ``duration_s`` leaves out the worker's time around it); None if unknown."""
    if trial["datetime_start"] and trial["datetime_complete"]:
        span = _time(trial["datetime_complete"]) - _time(trial["datetime_start"])
        waited = attrs.get("admit_wait_s")
        return span.total_seconds() - (float(waited) if isinstance(waited, (int, float)) else 0)
    if isinstance(attrs.get("duration_s"), (int, float)):
        return float(attrs["duration_s"])
    return None


def _gap(ended: Sequence[Mapping[str, Any]], attrs: Mapping[int, Mapping[str, Any]]) -> float:
    """The time from a trial's end to the next dispatch (its start plus what it waited for
    memory), its lower quartile: what the supervisor and a worker spend between trials."""
    ends = sorted(_time(t["datetime_complete"]) for t in ended)
    gaps = []
    for t in ended:
        waited = attrs[t["trial_id"]].get("admit_wait_s")
        wait = dt.timedelta(seconds=float(waited) if isinstance(waited, (int, float)) else 0.0)
        dispatch = _time(t["datetime_start"]) + wait
        before = bisect.bisect_right(ends, dispatch)
        if before:
            gaps.append((dispatch - ends[before - 1]).total_seconds())
    # the lower quartile: a dispatch long after the latest end waited for memory, not for hpo
    return statistics.quantiles(gaps, n=4)[0] if len(gaps) >= 4 else min(gaps, default=0.0)


def _settling(job: Job, attrs: Mapping[str, Any]) -> Job:
    """``job`` settling as the trial did (``settled_after_s``, ``vram_settled_mib``), if it did."""
    after, held = attrs.get("settled_after_s"), attrs.get("vram_settled_mib")
    if not isinstance(after, (int, float)) or not isinstance(held, (int, float)) or job.work_s <= 0:
        return job
    share = min(1.0, max(0.0, (float(after) - job.setup_s) / job.work_s))
    return replace(job, settle_after=share, settled_bytes=float(held) * MIB)


def from_workload(wl: Any, n_jobs: int, seed: int = 0) -> Trials:
    """``n_jobs`` configurations drawn from a workload file's space (module docstring)."""
    rng = random.Random(seed)
    ctx = int(wl.device.context_gib * GIB)
    jobs = []
    for i in range(n_jobs):
        params = {name: _draw(rng, dist) for name, dist in wl.space.items()}
        family = wl.family(params)
        extra = wl.eval_extra_bytes(params)
        peak = wl.peak_bytes(params, seed=seed * 1_000_003 + i) + extra + ctx
        worst = wl.peak_bytes(params) * (1 + wl.noise_frac) + extra + ctx
        work = wl.epochs * family.epoch_s
        demand = min(1.0, float(family.demand.value(params)))
        # it settles (hpo.execution.settle) at its peak plus 5 %: at the first report if its
        # memory was flat for the later half of the time so far, else at the second
        first = extra == 0 and family.setup_s <= family.epoch_s
        settle = (1 if first else 2) / wl.epochs if wl.epochs > 2 else None
        held = peak * (1 + DEFAULT_FRAC)
        jobs.append(Job(params, peak, worst, family.setup_s, work, demand, None, settle, held))
    return Trials(jobs, 0.0, int(wl.device.capacity_gib * GIB), wl.device_count, ctx)


def _draw(rng: random.Random, dist: Mapping[str, Any]) -> Any:
    if dist.get("choices"):
        return rng.choice(list(dist["choices"]))
    low, high = float(dist["low"]), float(dist["high"])
    if dist.get("log"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    return round(value) if dist.get("type") == "int" else value


def what_if(
    trials: Trials,
    target: int,
    card_gib: Sequence[float],
    counts: Sequence[int],
    policies: Sequence[Policy],
    margin_frac: float,
    groups: Sequence[str] = (),
) -> list[Row]:
    """Every scenario (card size × count × policy), replayed to ``target`` finished trials."""
    rows = []
    for gib in card_gib:
        for count in counts:
            cards = Cards(int(gib * GIB), count, trials.context_bytes, margin_frac)
            for policy in policies:
                outcome = replay(trials.jobs, target, policy, cards, trials.gap_s, groups)
                rows.append(Row(gib, count, policy.name, outcome, target, trials.finished))
    return rows


def render(rows: Sequence[Row], trials: Trials, source: str) -> str:
    """The table ``hpo plan`` prints."""
    lines = [source]
    m = trials.measured
    if m is not None:
        took = f"{m.wall_s / 3600:.2f} h" if m.wall_s >= 3600 else f"{m.wall_s:.0f} s"
        lines.append(
            f"as it ran: {m.finished} trials in {took} = {m.per_hour:.1f} "
            f"trials/h, {m.ooms} OOM; gap between trials {trials.gap_s:.2f} s"
        )
    head = f"{'card':>10} {'policy':>7} {'trials/h':>9} {'OOM':>5} {'pre-pruned':>10}"
    head += f" {'hours to ' + str(rows[0].target if rows else 0):>16}"
    if m is not None:
        head += f" {'hours left':>11}"
    lines.append(head)
    for r in rows:
        card = f"{r.cards}×{r.card_gib:g} GiB"
        o = r.outcome
        line = f"{card:>10} {r.policy:>7} {o.per_hour:>9.1f} {o.ooms:>5} {o.pre_pruned:>10}"
        line += f" {_hours(r.hours):>16}"
        if m is not None:
            line += f" {_hours(r.hours_left):>11}"
        lines.append(line)
    return "\n".join(lines)


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if math.isfinite(hours) else "never"

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
  start-up, work (every epoch, no pruning) and compute demand come from the file. As the
  simulated objective accumulates gradients, each configuration comes with its retries at
  2, 4, … ``max_accum_steps`` micro-batches (the same work at the micro-batch's demand).

**Retries.** A trial that ran out of memory and was retried with more micro-batches
(``retry_of``) is replayed as a chain: its retry is asked next, and only if it runs out of
memory in the replay too; a configuration that cannot fit a card whole runs as the first
retry that can (see :mod:`hpo.scheduling.replay`): under memory-aware admission always, under
blind PAR from the start on a workload file (hpo's gate knows its memory there) and after its
first OOM in a history (as it ran). Where a history's chain stops (a trial that ran, or a
retry that ran, with fewer than ``max_accum_steps`` micro-batches), the retries hpo would
ask if it ran out of memory in the replay go on from it, sized by the estimator fitted to the
trials that ran (and taking as long as that configuration, else its memory group, took).

**Policies.** ``parN`` is memory-blind fixed PAR; ``auto`` memory-aware admission reserving
each upper estimate (``memory.overcommit=false``); ``auto-oc`` the same under safe overcommit
(:mod:`hpo.scheduling.overcommit`, the default): each trial reserves a quantile
between its estimate's point (``est_vram_mib``; a workload file's noise-free footprint) and its
upper, and one whose peak exceeds that is a cap hit, asked again at once needing its peak. With
both, the table ends with whether overcommit pays on this study.

For each scenario it reports trials per hour, OOMs, configurations pre-pruned, and hours to
the target (``n_trials`` from zero; from a study, also what is left from where it stands).
Not modelled: a spike's own timing (the reservations are what hpo recorded; on a workload
file a trial holds its whole peak), and a study's trials split into micro-batches because
the gate chose to (they are replayed as they ran).
"""

from __future__ import annotations

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
from hpo.look.plan_history import (
    Known,
    external,
    gap_between,
    retry_tail,
    seconds_of,
    settling,
    time_of,
)
from hpo.memory import MemoryEstimator, Observation
from hpo.memory.micro import split
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
            "cap_hits": o.cap_hits,
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
    scaling: Sequence[str] = (),
    batch_param: str = "batch_size",
    max_accum_steps: int = 0,
) -> Trials:
    """The trials of ``db``'s study as jobs, in the order they were drawn (module docstring);
    ``scaling`` and ``groups`` are its memory parameters, ``batch_param`` the one its
    micro-batches divide, up to ``max_accum_steps`` ways (0: its objective does not)."""
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in db.rows(queries.PLAN_ATTRS):
        attrs[r["trial_id"]][r["key"]] = json.loads(r["value_json"])
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in db.rows(queries.PLAN_PARAMS):
        params[r["trial_id"]][r["param_name"]] = external(r["param_value"], r["distribution_json"])
    trials = db.rows(queries.PLAN_TRIALS)
    reason = {t["trial_id"]: attrs[t["trial_id"]].get("end_reason") for t in trials}
    ran = [t for t in trials if reason[t["trial_id"]] in _RAN]
    ran = [t for t in ran if seconds_of(t, attrs[t["trial_id"]]) is not None]
    if not ran:
        raise ConfigError(f"study {db.ref.name!r} has no trial that ran to a result to replay")
    ooms = [t for t in trials if reason[t["trial_id"]] == "oom"]
    capped = [t for t in trials if reason[t["trial_id"]] == "cap_exceeded"]
    if setup_s is None:  # what an OOM or a cap hit lost
        lost = [s for t in ooms + capped if (s := seconds_of(t, attrs[t["trial_id"]])) is not None]
        setup_s = statistics.median(lost) if lost else 0.0
    known, fit = Known(groups), MemoryEstimator(scaling, groups)
    for t in ran:
        a = attrs[t["trial_id"]]
        run = _as_run(params[t["trial_id"]], a, batch_param)
        peak = float(a.get("peak_vram_mib") or 0.0) * MIB
        known.add(run, peak, seconds_of(t, a))
        if peak > 0 and set(scaling) <= run.keys():
            fit.observe(Observation(run, peak))

    def size(run: Mapping[str, Any]) -> tuple[float, float, float] | None:
        """What ``run`` (never measured) would hold at its peak, reserve and take, as the
        trials that ran tell; None where nothing does."""
        guess = fit.predict(run) if set(scaling) <= run.keys() else None
        if guess is None and not known.peak(run):
            return None
        peak = max(known.peak(run), guess.point_bytes if guess else 0.0)
        return peak, guess.upper_bytes if guess else peak * 1.1, known.seconds(run)

    by_number: dict[int, Job] = {}
    for t in [*ran, *ooms]:
        a, p = attrs[t["trial_id"]], params[t["trial_id"]]
        if reason[t["trial_id"]] == "oom":  # it never ran: what it needed at least, as the others
            seen = a.get("peak_vram_mib")
            bound = needed_lower_bound(None if seen is None else float(seen) * MIB, a.get("error"))
            sized = size(_as_run(p, a, batch_param))
            peak, seconds = max(bound or 0.0, sized[0] if sized else 0.0), known.seconds(p)
        else:
            peak, seconds = float(a.get("peak_vram_mib") or 0.0) * MIB, seconds_of(t, a) or 0.0
        upper = a.get("est_vram_upper_mib")
        if a.get("vram_reserved_mib") is not None:  # a reservation under overcommit: the upper
            reserve = max(float(a["vram_reserved_mib"]), float(upper or 0.0)) * MIB
        elif upper is not None:
            reserve = float(upper) * MIB + context_bytes
        else:
            reserve = peak * 1.1
        point = a.get("est_vram_mib")  # what safe overcommit shades towards
        point_bytes = float(point) * MIB if isinstance(point, (int, float)) else None
        setup = min(setup_s, seconds)
        steady = a.get("steady_vram_mib")  # outside its declared spikes
        alloc = float(steady) * MIB if isinstance(steady, (int, float)) else None
        job = Job(p, peak, reserve, setup, seconds - setup, alloc_bytes=alloc)
        job = replace(job, point_bytes=point_bytes)
        by_number[int(t["number"])] = settling(job, a)
    oomed = {int(t["number"]) for t in ooms}
    ids = {int(t["number"]): t["trial_id"] for t in trials}
    retried = {attrs[ids[n]].get("retry_of") for n in by_number} & oomed
    for number, job in by_number.items():  # where the history stops, as hpo would go on
        if number not in retried and max_accum_steps > 1:
            steps = int(attrs[ids[number]].get("accum_steps", 1))
            p = params[ids[number]]
            by_number[number] = retry_tail(job, p, steps, max_accum_steps, batch_param, size)
    for number in sorted(by_number, reverse=True):  # a retry after its chain of retries
        parent = attrs[ids[number]].get("retry_of")
        if isinstance(parent, int) and parent in oomed and parent in by_number:
            job = by_number.pop(number)  # asked only when its parent runs out of memory
            by_number[parent] = replace(by_number[parent], retry=job)
    jobs = [by_number[n] for n in sorted(by_number)]
    budgets = [float(a["vram_budget_mib"]) for a in attrs.values() if "vram_budget_mib" in a]
    capacity = int(max(budgets) * MIB / (1 - margin_frac)) if budgets else None
    devices = {a.get("device") for a in attrs.values() if a.get("device")}
    ended = [t for t in trials if t["datetime_start"] and t["datetime_complete"]]
    start = min(time_of(t["datetime_start"]) for t in ended)
    wall = (max(time_of(t["datetime_complete"]) for t in ended) - start).total_seconds()
    measured = Outcome(len(ran), wall, len(ooms), 0)
    run = {r["key"]: json.loads(r["value_json"]) for r in db.rows(queries.RUN_ATTRS)}
    target = run.get(RUN_TARGET_ATTR)
    return Trials(
        jobs,
        gap_between(ended, attrs),
        capacity,
        max(1, len(devices)),
        context_bytes,
        finished=len(ran),
        measured=measured,
        target=int(target) if isinstance(target, int) else None,
    )


def _as_run(params: Mapping[str, Any], attrs: Mapping[str, Any], batch: str) -> dict[str, Any]:
    """A trial's configuration as it ran: its parameters with its micro-batch, if split."""
    micro = attrs.get("micro_batch")
    return {**params, batch: micro} if micro is not None and batch in params else dict(params)


def from_workload(
    wl: Any, n_jobs: int, seed: int = 0, batch_param: str = "batch_size", max_accum_steps: int = 8
) -> Trials:
    """``n_jobs`` configurations drawn from a workload file's space, each retried with twice
    the micro-batches after an OOM up to ``max_accum_steps`` (module docstring)."""
    rng = random.Random(seed)
    ctx = int(wl.device.context_gib * GIB)
    ways = [2**e for e in range(1, max(1, max_accum_steps).bit_length())]  # as hpo.memory.micro
    jobs = []
    for i in range(n_jobs):
        params = wl.draw(rng)
        retry = None
        for k in reversed(ways if batch_param in params else []):  # the retries, from the end
            run = split(params, batch_param, k)
            if run is not None:
                retry = replace(_workload_job(wl, params, run, seed * 1_000_003 + i), retry=retry)
        jobs.append(replace(_workload_job(wl, params, params, seed * 1_000_003 + i), retry=retry))
    return Trials(jobs, 0.0, int(wl.device.capacity_gib * GIB), wl.device_count, ctx)


def _workload_job(wl: Any, params: Mapping[str, Any], run: Mapping[str, Any], seed: int) -> Job:
    """The workload's trial of ``params`` run as ``run`` (its micro-batch): as the simulated
    objective, the same GPU work at the micro-batch's lower demand."""
    family, ctx = wl.family(run), wl.device.context_gib * GIB
    extra = wl.eval_extra_bytes(run)
    peak = wl.peak_bytes(run, seed=seed) + extra + ctx
    worst = wl.peak_bytes(run) * (1 + wl.noise_frac) + extra + ctx
    demand = min(1.0, float(family.demand.value(run)))
    work = wl.epochs * family.epoch_s * min(1.0, float(family.demand.value(params))) / demand
    # it settles (hpo.execution.settle) at its peak plus 5 %: at the first report if its
    # memory was flat for the later half of the time so far, else at the second
    first = extra == 0 and family.setup_s <= family.epoch_s
    settle = (1 if first else 2) / wl.epochs if wl.epochs > 2 else None
    held = peak * (1 + DEFAULT_FRAC)
    nominal = wl.peak_bytes(run) + extra + ctx  # the estimate's point: no noise
    return Job(
        run, peak, worst, family.setup_s, work, demand, None, settle, held,
        gate_knows=True, point_bytes=nominal,
    )  # fmt: skip


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
    head = (
        f"{'card':>10} {'policy':>7} {'trials/h':>9} {'OOM':>5} {'cap hits':>8} {'pre-pruned':>10}"
    )
    head += f" {'hours to ' + str(rows[0].target if rows else 0):>16}"
    if m is not None:
        head += f" {'hours left':>11}"
    lines.append(head)
    for r in rows:
        card = f"{r.cards}×{r.card_gib:g} GiB"
        o = r.outcome
        line = f"{card:>10} {r.policy:>7} {o.per_hour:>9.1f} {o.ooms:>5} {o.cap_hits:>8}"
        line += f" {o.pre_pruned:>10}"
        line += f" {_hours(r.hours):>16}"
        if m is not None:
            line += f" {_hours(r.hours_left):>11}"
        lines.append(line)
    lines += [line for line in (_overcommit_pays(rows),) if line]
    return "\n".join(lines)


def _overcommit_pays(rows: Sequence[Row]) -> str | None:
    """Whether safe overcommit (``auto-oc``) beats reserving upper estimates (``auto``) on
    the first card size and count both were replayed on; None where they were not."""
    by = {(r.card_gib, r.cards, r.policy): r for r in rows}
    for (gib, cards, policy), oc in by.items():
        upper = by.get((gib, cards, "auto"))
        if policy != "auto-oc" or upper is None or upper.outcome.per_hour <= 0:
            continue
        gain = oc.outcome.per_hour / upper.outcome.per_hour
        verdict = "pays" if gain > 1.0 else "does not pay"
        return (
            f"overcommit {verdict} on {cards}×{gib:g} GiB: auto-oc {gain:.2f}× the trials/h of "
            f"auto, {oc.outcome.cap_hits} cap hits (memory.overcommit=true is auto-oc)"
        )
    return None


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if math.isfinite(hours) else "never"

"""Where a packing run's time goes: the card's lower bound, and admission replayed for free.

``python -m bench.packing_bound --db DIR/par1/packing-par1.db --study packing-par1``

Takes the configurations a study ran to a result (``python -m bench.packing --keep DIR`` keeps
every policy's study) and reports, in wall seconds at the benchmark's time scale:

- ``work_s``: their work one after another, alone on the card (fixed PAR=1 with no overheads,
  no start-up); ``setup_s``: their start-ups one after another;
- ``bound_s``: a lower bound on any schedule's wall time, the larger of two. Memory
  (``memory_bound_s``): trials holding more than half the budget cannot share the card with
  each other, so they run one after another (``big_s``); the rest fill the memory beside them
  (where at least the smallest of them fits) and whatever memory × time is left over needs the
  whole budget. Compute (``gpu_s``): a card does at most one GPU-second of work per second, and
  a trial's epochs are ``demand × work`` GPU-seconds;
- ``replay_s``: hpo's own admission (``--policy``, by default ``auto``; ``auto-oc`` replays
  safe overcommit, ``parN`` memory-blind PAR) (:mod:`hpo.scheduling.replay`: admission, backlog and
  durations learned as the supervisor learns them) told the true memory, replayed as events
  with no processes, no storage and no latency, with the workload's contention (trials whose
  demands add up to more than 1 slow down together) and its start-up (``setup_s``: the trial
  holds its reservation, the card does no work for it).

Memory is each configuration's peak with its evaluation (``eval_extra_gib``), its worst noise
and the context, and never below the context (a term with a negative coefficient cannot make
memory negative). The replay is a schedule, so it never comes out below the bound.

``work_s / replay_s`` is what the policy itself can reach; a measured run falls short of it by
what processes, SQLite and the supervisor's loop cost per trial.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from hpo.devices import GIB
from hpo.scheduling.replay import Cards, Job, Outcome, Policy, replay
from hpo.sim import load_workload

# as run, epochs reported, as asked, the trial's number (its run-to-run noise's seed)
Run = tuple[dict[str, Any], int, dict[str, Any], int]


def load_runs(db: Path, study: str, batch_param: str = "batch_size") -> list[Run]:
    """(params as run, epochs reported, params as asked) of the trials that ran to a result,
    in trial order: a trial that ran as micro-batches (``micro_batch``, ``accum_steps`` > 1)
    held the memory of its micro-batch."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """SELECT t.trial_id,
                 (SELECT COUNT(*) FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id),
                 t.number
               FROM trials t JOIN studies s ON s.study_id = t.study_id
               JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'end_reason'
               WHERE s.study_name = ? AND a.value_json IN ('"complete"', '"pruned"')
               ORDER BY t.number""",
            (study,),
        ).fetchall()
        runs = []
        for trial_id, epochs, number in rows:
            params = con.execute(
                "SELECT param_name, param_value, distribution_json FROM trial_params "
                "WHERE trial_id = ?",
                (trial_id,),
            ).fetchall()
            asked = {name: _decode(v, d) for name, v, d in params}
            attrs = dict(
                con.execute(
                    "SELECT key, value_json FROM trial_user_attributes WHERE trial_id = ? "
                    "AND key IN ('accum_steps', 'micro_batch')",
                    (trial_id,),
                ).fetchall()
            )
            run = dict(asked)
            if json.loads(attrs.get("accum_steps", "1")) > 1 and "micro_batch" in attrs:
                run[batch_param] = json.loads(attrs["micro_batch"])
            runs.append((run, int(epochs), asked, int(number)))
        return runs
    finally:
        con.close()


def _decode(value: float, distribution_json: str) -> Any:
    dist = json.loads(distribution_json)
    if dist["name"] == "CategoricalDistribution":
        return dist["attributes"]["choices"][int(value)]
    return value


def footprint_gib(wl: Any, params: dict[str, Any]) -> float:
    """The most a run of ``params`` holds: peak and evaluation with the worst noise, context."""
    peak = wl.peak_bytes(params) * (1 + wl.noise_frac) + wl.eval_extra_bytes(params)
    return peak / GIB + wl.device.context_gib


def lower_bound(trials: list[tuple[float, float]], budget_gib: float) -> tuple[float, float]:
    """(big_s, memory bound_s) for trials given as (footprint GiB, seconds alone)."""
    big = [(f, s) for f, s in trials if f > budget_gib / 2]
    rest = [(f, s) for f, s in trials if f <= budget_gib / 2]
    smallest = min((f for f, _ in rest), default=0.0)
    beside = sum((budget_gib - f) * s for f, s in big if budget_gib - f >= smallest)
    rest_gib_s = sum(f * s for f, s in rest)
    big_s = sum(s for _, s in big)
    return big_s, big_s + max(0.0, rest_gib_s - beside) / budget_gib


def seconds_alone(wl: Any, run: Run, time_scale: float) -> float:
    """Wall seconds of a run's epochs alone on the card: a micro-batched one does the same GPU
    work at its micro-batch's lower utilisation, as the simulated objective does."""
    params, epochs, asked, _ = run
    family = wl.family(params)
    stretch = min(1.0, family.demand.value(asked)) / min(1.0, family.demand.value(params))
    return epochs * family.epoch_s * time_scale * stretch


def run_gib(wl: Any, run: Run) -> float:
    """What this run of its configuration held at most: its peak with its own run-to-run
    noise (seeded by its trial's number, as the simulated objective draws it), its
    evaluation and the context."""
    params, number = run[0], run[3]
    peak = wl.peak_bytes(params, seed=number) + wl.eval_extra_bytes(params)
    return peak / GIB + wl.device.context_gib


def replay_runs(
    wl: Any, runs: list[Run], args: argparse.Namespace, policy: Policy | None = None
) -> Outcome:
    """hpo's admission replayed on these runs (:mod:`hpo.scheduling.replay`), by default
    memory-aware and told the true memory (each run's worst noise, reserved). Under safe
    overcommit (``auto-oc``) each job holds what its run held and admission knows the truth
    as an estimate: the noise-free footprint as its point, the worst noise as its upper."""
    policy = policy or Policy(args.par, aware=True)
    jobs = []
    for run in runs:
        params = run[0]
        family, scale = wl.family(params), args.time_scale
        footprint = footprint_gib(wl, params) * GIB
        work = seconds_alone(wl, run, scale)
        demand = float(family.demand.value(params))
        setup = family.setup_s * scale
        if policy.overcommit or not policy.aware:
            nominal = wl.footprint_bytes(params)
            peak = run_gib(wl, run) * GIB
            jobs.append(Job(params, peak, footprint, setup, work, demand, point_bytes=nominal))
        else:
            jobs.append(Job(params, footprint, footprint, setup, work, demand))
    cards = Cards(
        int(wl.device.capacity_gib * GIB), 1, int(wl.device.context_gib * GIB), args.margin_frac
    )
    return replay(
        jobs, len(jobs), policy, cards, 0.0, [wl.family_param], args.max_waiting, args.max_bypass
    )


def bound_of(wl: Any, runs: list[Run], time_scale: float, margin_frac: float) -> dict[str, Any]:
    """The card's lower bound on these runs' wall time, and what makes it (module docstring)."""
    budget_gib = wl.device.capacity_gib * (1 - margin_frac)
    alone, gpu_s, setup_s = [], 0.0, 0.0
    for run in runs:
        params = run[0]
        seconds = seconds_alone(wl, run, time_scale)
        alone.append((footprint_gib(wl, params), seconds))
        gpu_s += min(1.0, wl.family(params).demand.value(params)) * seconds
        setup_s += wl.family(params).setup_s * time_scale
    big_s, memory_bound_s = lower_bound(alone, budget_gib)
    return {
        "trials": len(runs),
        "budget_gib": round(budget_gib, 2),
        "work_s": round(sum(s for _, s in alone), 1),
        "setup_s": round(setup_s, 1),
        "gpu_s": round(gpu_s, 1),
        "big_s": round(big_s, 1),
        "memory_bound_s": round(memory_bound_s, 1),
        "bound_s": round(max(memory_bound_s, gpu_s), 1),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    wl = load_workload(args.workload)
    runs = load_runs(Path(args.db), args.study, args.batch_param)
    if not runs:
        raise ValueError(f"no trial of study {args.study!r} ran to a result in {args.db}")
    out = bound_of(wl, runs, args.time_scale, args.margin_frac)
    replay_s = replay_runs(wl, runs, args, Policy.parse(args.policy, args.par)).wall_s
    work_s, bound_s = out["work_s"], out["bound_s"]
    out.update(
        replay_s=round(replay_s, 1),
        work_over_bound=round(work_s / bound_s, 3),
        work_over_replay=round(work_s / replay_s, 3),
    )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.packing_bound", description=__doc__)
    p.add_argument("--db", required=True, help="SQLite file of a study bench.packing kept")
    p.add_argument("--study", required=True, help="its study name, e.g. packing-par1")
    p.add_argument("--workload", default="bench/workloads/criteria24.yaml", help="workload YAML")
    p.add_argument("--time-scale", type=float, default=0.05, help="as bench.packing ran")
    p.add_argument("--margin-frac", type=float, default=0.05, help="memory.margin_frac")
    p.add_argument("--max-bypass", type=int, default=8, help="memory.max_bypass")
    p.add_argument("--max-waiting", type=int, default=8, help="memory.max_waiting")
    p.add_argument("--par", type=int, default=8, help="worker processes")
    p.add_argument(
        "--policy",
        default="auto",
        help="the replayed policy: auto (reserving the truth), auto-oc (safe overcommit), parN",
    )
    p.add_argument("--batch-param", default="batch_size", help="study.memory.batch_param")
    p.add_argument("--json", dest="json_out", help="write the results here")
    args = p.parse_args(argv)
    if not Path(args.db).is_file():
        p.error(f"--db: no such file: {args.db}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = measure(args)
    except (ValueError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in result.items():
        print(f"{key:18}{value}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

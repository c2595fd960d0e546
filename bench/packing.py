"""Packing trials onto a GPU: memory-aware admission against fixed PAR and an oracle.

``python -m bench.packing --workload FILE --trials N --json OUT``

Runs the real supervisor (worker processes, SQLite, the simulated card of the workload file,
time scaled by ``--time-scale``) once per policy, on the same random sample of configurations:

- ``par1`` … ``par4``: memory-blind fixed PAR, as the seeds ran: a trial starts whenever a
  worker is idle, whatever else runs, so co-located trials can run out of memory and are lost;
- ``aware``: hpo's admission (``memory.pack=true``, cap 8) with what its estimator learns,
  under safe overcommit (``memory.overcommit=true``, the default);
- ``aware-upper``: the same reserving each upper estimate (``memory.overcommit=false``);
- ``oracle``: the same admission told the true memory of every configuration;
- ``learner``: the oracle from the moment hpo knows anything of a configuration's group (a
  measured or settled trial); before, what hpo's gate says (for a group's first trial: it runs
  alone). What no estimator without a prior can beat: it measures what not knowing a group at
  all costs, as ``learner_vs_oracle``.

The memory-blind and memory-aware policies rely on hpo's own gate to pre-prune what cannot fit
(nothing is skipped by the workload's ground truth); only the oracle skips, by the truth, what
cannot fit alone (with its worst noise, over the most hpo lets a lone trial hold: the budget
plus the margin), and runs the rest as the memory-aware policy would. Per policy it reports
trials per (simulated) hour (completed or pruned by the pruner), OOM crashes, useful GPU work
(GPU-seconds of compute in those trials per wall-second; 1.0 is the card's limit), the card's
busy fraction and memory packing (held / capacity), both time-averaged from a sampler of the
card's ledger; and how honest the estimates were: ``wrongly_pre_pruned`` (pre-pruned although
the workload says the configuration fits the budget with its worst noise), ``over_upper_frac``
and ``over_upper_max`` (trials that ran whose measured peak exceeded their upper estimate: the
share, and the largest excess relative to the estimate).

And what safe overcommit is judged by (issue 33): ``configs_evaluated`` (distinct
configurations run to a result), ``cap_hits`` (trials ended ``cap_exceeded``),
``cap_hit_waste_frac`` (the card's memory-seconds the capped-out trials held, their cap times
their duration, over the run's: what they kept from others), ``neighbour_losses`` (trials that
ran out of memory on a full card although their own run fits the card alone: another trial's
memory failed them), ``bound_ratio`` (the wall time over ``bench.packing_bound``'s
clairvoyant bound of the configurations this policy ran to a result) and ``replay_ratio``
(this policy replayed on them without processes, ``replay_s``, over that bound).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._oracle import TruthGate, true_upper
from hpo.config import Settings, compose
from hpo.devices import GIB, MIB, Device, SimulatedGpu
from hpo.errors import HpoError
from hpo.memory import build_gate
from hpo.sim import load_workload
from hpo.sim.objective import GPU_SECONDS_ATTR
from hpo.supervisor import Supervisor

POLICIES = ("par1", "par2", "par3", "par4", "aware", "aware-upper", "oracle")  # the default run
KNOWN = (*POLICIES, "learner")  # and the learner, a diagnostic asked for by name
AWARE = ("aware", "aware-upper", "oracle", "learner")  # memory-aware admission
AWARE_CAP = 8


class CardSampler(threading.Thread):
    """Reads the simulated cards' ledgers every ``interval_s``: memory held and demand."""

    def __init__(self, devices: list[SimulatedGpu], interval_s: float = 0.02) -> None:
        super().__init__(daemon=True, name="card-sampler")
        self._devices, self._interval = devices, interval_s
        self.samples: list[tuple[float, float, float]] = []  # (time, held frac, busy frac)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            held = busy = 0.0
            for device in self._devices:
                snap = device.snapshot()
                held += (snap.used_bytes or 0) / device.capacity_bytes
                busy += min(1.0, snap.utilization or 0.0)
            n = len(self._devices)
            self.samples.append((time.monotonic(), held / n, busy / n))

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def averages(self, start: float, end: float) -> tuple[float, float]:
        window = [(h, b) for t, h, b in self.samples if start <= t <= end]
        if not window:
            return 0.0, 0.0
        return sum(h for h, _ in window) / len(window), sum(b for _, b in window) / len(window)


def run_policy(policy: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One study under ``policy``; its metrics."""
    workdir = root / policy
    par = AWARE_CAP if policy in AWARE else int(policy.removeprefix("par"))
    declared = load_workload(args.workload).scaling  # the workload's memory-scaling params
    scaling = [f"study.memory.scaling=[{','.join(declared)}]"] if declared else []
    cfg = compose(
        [
            "study=simulated",
            f"study.name=packing-{policy}",
            f"study.workload={args.workload}",
            f"study.n_trials={args.trials}",
            f"study.time_scale={args.time_scale}",
            "sampler=random",
            f"sampler.seed={args.seed}",
            f"par={par}",
            f"memory.pack={str(policy in AWARE).lower()}",
            f"memory.overcommit={str(policy != 'aware-upper').lower()}",
            f"storage.dir={workdir}",
            "faults.recycle_after=0",
            "max_failures_in_a_row=1000000",  # blind PAR loses trials to OOM; keep going
            "log_level=WARNING",
            *scaling,
            *args.override,
        ]
    )
    workload = load_workload(str(cfg.study.workload))
    settings = Settings.from_config(cfg)

    def gate(settings: Settings, devices: list[Device]) -> Any:
        inner = build_gate(settings, devices)
        if policy in ("oracle", "learner"):
            return TruthGate(inner, workload, cold=policy == "learner")
        return inner

    from hpo.devices import open_devices

    cards = [d for d in open_devices(settings.devices) if isinstance(d, SimulatedGpu)]
    sampler = CardSampler(cards)
    sampler.start()
    try:
        Supervisor(settings, poll_s=0.05, gate_factory=gate).run()
    finally:
        sampler.stop()
    db = workdir / f"packing-{policy}.db"
    row = measure(db, sampler, float(cfg.study.time_scale))
    budget = workload.device.capacity_gib * GIB * (1 - settings.memory.device_margin_frac)
    row.update(honesty(db, f"packing-{policy}", workload, budget))
    row.update(overcommit_metrics(db, f"packing-{policy}", workload, row["wall_s"]))
    row.update(bound_metrics(db, policy, workload, settings, args, row["wall_s"]))
    row["by_family"] = by_family(db, f"packing-{policy}", workload.family_param)
    return row


def overcommit_metrics(db: Path, study_name: str, workload: Any, wall_s: float) -> dict[str, Any]:
    """Distinct configurations run to a result, cap hits and the memory-seconds they held,
    and trials another trial's memory failed (module docstring)."""
    import optuna

    from hpo.memory.oom import hit_own_limit

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    capacity = workload.device.capacity_gib * GIB * workload.device_count
    configs, cap_hits, held, neighbours = set(), 0, 0.0, 0
    for trial in study.get_trials(deepcopy=False):
        attrs, reason = trial.user_attrs, trial.user_attrs.get("end_reason")
        if reason in ("complete", "pruned"):
            configs.add(tuple(sorted((k, repr(v)) for k, v in trial.params.items())))
        elif reason == "cap_exceeded":
            cap_hits += 1
            held += (
                float(attrs.get("vram_reserved_mib", 0.0))
                * MIB
                * float(attrs.get("duration_s", 0.0))
            )
        elif reason == "oom" and not hit_own_limit(attrs.get("error")):
            run = dict(trial.params)
            if attrs.get("micro_batch") is not None and "batch_size" in run:
                run["batch_size"] = attrs["micro_batch"]
            own = workload.peak_bytes(run, seed=trial.number) + workload.eval_extra_bytes(run)
            own += workload.device.context_gib * GIB
            neighbours += own <= workload.device.capacity_gib * GIB
    return {
        "configs_evaluated": len(configs),
        "cap_hits": cap_hits,
        "cap_hit_waste_frac": round(held / (capacity * wall_s), 4) if wall_s > 0 else 0.0,
        "neighbour_losses": neighbours,
    }


def bound_metrics(
    db: Path, policy: str, workload: Any, settings: Settings, args: argparse.Namespace, wall: float
) -> dict[str, Any]:
    """The clairvoyant bound of the configurations ``policy`` ran to a result
    (:mod:`bench.packing_bound`), its wall time over it, and the policy replayed on them."""
    from bench import packing_bound
    from hpo.scheduling.replay import Policy

    mem = settings.memory
    runs = packing_bound.load_runs(db, f"packing-{policy}", settings.study.batch_param)
    if not runs:
        return {"bound_s": None, "replay_s": None, "bound_ratio": None, "replay_ratio": None}
    bound = packing_bound.bound_of(workload, runs, args.time_scale, mem.device_margin_frac)
    aware = policy in AWARE
    par = AWARE_CAP if aware else int(policy.removeprefix("par"))
    replayed = Policy(par, aware, overcommit=aware and mem.overcommit)
    opts = argparse.Namespace(
        time_scale=args.time_scale,
        margin_frac=mem.device_margin_frac,
        par=par,
        max_waiting=mem.max_waiting,
        max_bypass=mem.max_bypass,
    )
    replay_s = packing_bound.replay_runs(workload, runs, opts, replayed).wall_s
    bound_s = bound["bound_s"]
    return {
        "bound_s": bound_s,
        "replay_s": round(replay_s, 1),
        "bound_ratio": round(wall / bound_s, 3) if bound_s else None,
        "replay_ratio": round(replay_s / bound_s, 3) if bound_s else None,
    }


def measure(db: Path, sampler: CardSampler, time_scale: float) -> dict[str, Any]:
    """The policy's metrics from its trials and the card samples of its busy window."""
    con = sqlite3.connect(db)
    rows = con.execute(
        """SELECT t.trial_id, t.datetime_start, t.datetime_complete,
                  MAX(CASE WHEN a.key = 'end_reason' THEN a.value_json END),
                  MAX(CASE WHEN a.key = ? THEN a.value_json END)
           FROM trials t LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id
           GROUP BY t.trial_id""",
        (GPU_SECONDS_ATTR,),
    ).fetchall()
    con.close()
    reasons = [json.loads(r[3]) if r[3] else None for r in rows]
    useful = [r for r, why in zip(rows, reasons, strict=True) if why in ("complete", "pruned")]
    ran = [r for r, why in zip(rows, reasons, strict=True) if why != "memory_estimate"]
    start = min(_ts(r[1]) for r in ran)
    end = max(_ts(r[2]) for r in ran if r[2])
    wall = end - start
    gpu_s = sum(float(json.loads(r[4])) for r in useful if r[4])
    mono_now, wall_now = time.monotonic(), time.time()
    held, busy = sampler.averages(mono_now - (wall_now - start), mono_now - (wall_now - end))
    return {
        "trials_per_hour": round(len(useful) / (wall / time_scale) * 3600, 1),
        "useful_trials": len(useful),
        "oom_crashes": reasons.count("oom"),
        "skipped": reasons.count("memory_estimate"),
        "useful_gpu_frac": round(gpu_s / wall, 3),
        "gpu_busy_frac": round(busy, 3),
        "mem_packing_frac": round(held, 3),
        "wall_s": round(wall, 1),
    }


def honesty(db: Path, study_name: str, workload: Any, budget: float) -> dict[str, Any]:
    """Wrongly pre-pruned trials, and trials that ran above their upper estimate."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    wrong, oom_fits, over, estimated = 0, 0, [], 0
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        reason = attrs.get("end_reason")
        fits = true_upper(workload, dict(trial.params)) <= budget
        wrong += reason == "memory_estimate" and fits
        oom_fits += reason == "oom" and fits
        upper, peak = attrs.get("est_vram_upper_mib"), attrs.get("peak_vram_mib")
        if reason in ("complete", "pruned") and upper is not None and peak is not None:
            estimated += 1
            if peak > upper:
                over.append(peak / upper - 1)
    return {
        "wrongly_pre_pruned": wrong,
        "oom_of_fitting": oom_fits,  # OOMs of configurations the workload says fit
        "over_upper_frac": round(len(over) / max(1, estimated), 4),
        "over_upper_max": round(max(over, default=0.0), 4),
    }


def by_family(db: Path, study_name: str, family_param: str) -> dict[str, dict[str, int]]:
    """Per model family: trials that ran to a result, and trials lost to OOM."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{db}")
    out: dict[str, dict[str, int]] = {}
    for trial in study.get_trials(deepcopy=False):
        family = str(trial.params.get(family_param))
        reason = trial.user_attrs.get("end_reason")
        row = out.setdefault(family, {"useful": 0, "oom": 0})
        if reason in ("complete", "pruned"):
            row["useful"] += 1
        elif reason == "oom":
            row["oom"] += 1
    return dict(sorted(out.items()))


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def summarise(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fixed = [p for p in POLICIES[:4] if p in policies]
    safe = [p for p in fixed if policies[p]["oom_crashes"] == 0]
    best_safe = max(safe, key=lambda p: int(p[3:])) if safe else None
    out: dict[str, Any] = {"best_safe_fixed_par": int(best_safe[3:]) if best_safe else None}
    aware = policies.get("aware")

    def ratio(key: str, other: str | None) -> float | None:
        if aware is None or other not in policies or not policies[other][key]:
            return None
        return round(aware[key] / policies[other][key], 3)

    out["aware_vs_oracle"] = ratio("useful_gpu_frac", "oracle")
    if "learner" in policies and policies.get("oracle", {}).get("useful_gpu_frac"):
        learner, oracle = policies["learner"], policies["oracle"]
        out["learner_vs_oracle"] = round(learner["useful_gpu_frac"] / oracle["useful_gpu_frac"], 3)
    if aware is not None:
        for key in (
            "oom_crashes",
            "oom_of_fitting",
            "wrongly_pre_pruned",
            "over_upper_frac",
            "over_upper_max",
        ):
            out[f"aware_{key}"] = aware[key]
    out["aware_vs_par2"] = ratio("useful_gpu_frac", "par2")
    out["aware_vs_best_safe"] = ratio("trials_per_hour", best_safe)
    if fixed:  # the best blind fixed PAR by useful GPU work, its OOM retries counted
        best = max(fixed, key=lambda p: policies[p]["useful_gpu_frac"])
        out["best_blind_par"] = int(best[3:])
        out["aware_vs_best_blind"] = ratio("useful_gpu_frac", best)
        out["aware_vs_best_blind_configs"] = ratio("configs_evaluated", best)
    if "aware-upper" in policies:
        out["aware_vs_aware_upper"] = ratio("useful_gpu_frac", "aware-upper")
    return out


def print_table(result: dict[str, Any]) -> None:
    cols = (
        "useful_gpu_frac",
        "configs_evaluated",
        "oom_crashes",
        "cap_hits",
        "cap_hit_waste_frac",
        "neighbour_losses",
        "wall_s",
        "bound_ratio",
        "replay_ratio",
        "trials_per_hour",
        "gpu_busy_frac",
        "mem_packing_frac",
        "skipped",
        "wrongly_pre_pruned",
        "over_upper_frac",
    )
    print(f"{'policy':12}" + "".join(f"{c:>19}" for c in cols))
    for name, row in result["policies"].items():
        print(f"{name:12}" + "".join(f"{row[c]!s:>19}" for c in cols))
    print("useful / lost to OOM, by family:")
    for name, row in result["policies"].items():
        fams = "  ".join(f"{f} {v['useful']}/{v['oom']}" for f, v in row["by_family"].items())
        print(f"  {name:8}{fams}")
    keys = ("best_safe_fixed_par", "aware_vs_oracle", "aware_vs_par2", "aware_vs_best_safe")
    keys += ("best_blind_par", "aware_vs_best_blind", "aware_vs_best_blind_configs")
    for key in (*keys, "aware_vs_aware_upper"):
        if key in result:
            print(f"{key}: {result[key]}")
    if "learner_vs_oracle" in result:
        print(f"learner_vs_oracle: {result['learner_vs_oracle']}")
    for key in [k for k in result if k.startswith("aware_") and k not in ("aware_vs_oracle",)]:
        if not key.startswith("aware_vs") and key not in keys:
            print(f"{key}: {result[key]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.packing", description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="bench/workloads/criteria24.yaml", help="workload YAML")
    p.add_argument("--trials", type=int, default=150, help="trials per policy (default 150)")
    p.add_argument("--json", dest="json_out", help="write the results here")
    p.add_argument("--time-scale", type=float, default=0.05, help="wall s per simulated s")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sampler")
    p.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated, of {', '.join(KNOWN)}",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every policy (repeatable)",
    )
    p.add_argument("--keep", help="keep each policy's study here (default: a temporary folder)")
    p.add_argument(
        "--no-spikes",
        action="store_true",
        help="evaluations not declared as memory spikes (eval_spike off): what that lever brings",
    )
    args = p.parse_args(argv)
    args.workload = str(Path(args.workload).resolve())
    unknown = set(args.policies.split(",")) - set(KNOWN)
    if unknown:
        p.error(f"--policies: unknown {', '.join(sorted(unknown))} (known: {', '.join(KNOWN)})")
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    return args


def without_spikes(path: str, out_dir: Path) -> str:
    """A copy of the workload file whose families declare no evaluation spikes."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    for family in raw["families"].values():
        family["eval_spike"] = False
    out = out_dir / Path(path).name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        load_workload(args.workload)
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for policy in args.policies.split(",") if args.keep else ():
        kept = Path(args.keep) / policy
        if kept.is_dir() and any(kept.iterdir()):  # its study would go on, measured as one
            print(
                f"error: --keep: {kept} holds an earlier run; choose an empty folder",
                file=sys.stderr,
            )
            return 2
    result: dict[str, Any] = {
        "workload": args.workload,
        "trials": args.trials,
        "time_scale": args.time_scale,
        "seed": args.seed,
        "spikes": not args.no_spikes,
        "policies": {},
    }
    with tempfile.TemporaryDirectory(prefix="hpo-packing-") as tmp:
        root = Path(args.keep or tmp)
        if args.no_spikes:
            args.workload = without_spikes(args.workload, Path(tmp))
        for policy in args.policies.split(","):
            t0 = time.monotonic()
            result["policies"][policy] = run_policy(policy, args, root)
            row = result["policies"][policy]
            print(f"{policy}: {row} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    result.update(summarise(result["policies"]))
    print_table(result)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

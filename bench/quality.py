"""Search quality per GPU-second: hpo's default pruner against no pruning and Optuna's pruners.

``python -m bench.quality --json OUT --png OUT``

The default run (3 seeds, 30 trials, 2 workers per study, 3 studies side by side; criteria: 2
seeds, 6 trials of 4 epochs) took 24 minutes on 2 busy CPU cores: 17 for the 45 simulated
studies, each mostly the supervisor's start and stop; ``--seeds 5`` takes about 30 for them.
``--inprocess`` runs the simulated studies in this process without the supervisor, one trial
at a time, in about a minute for five seeds: how the default pruner's settings were explored.

For each simulated workload and each sampler seed it runs the real supervisor (worker
processes, SQLite, the workload's simulated card, TPE seeded with the seed) once per pruner:
``none``, Optuna's ``median`` (``MedianPruner()``), ``asha`` (``SuccessiveHalvingPruner()``)
and ``hyperband`` (``HyperbandPruner()``) at their defaults, and ``hpo`` (hpo's default,
``pruner=patient_hyperband``). Then it runs the built-in criteria study on CPU (real torch,
small) the same way, as a cross-check that the simulated curves are not the only evidence.

Definitions (per workload; a trial counts when it ran to a result: complete or pruned by the
pruner; pre-pruned trials ran nothing and count nowhere):

- *true value* of a configuration: its best clean value over a full trial's epochs, without
  validation noise (``Workload.true_value``); the *optimum* is the best true value over the
  search space (``Workload.optimum``). On the criteria study there is no truth: a trial's true
  value is its observed value and the optimum is the best value any run of it found.
- *incumbent*: the completed trial with the best observed value so far (what the study would
  recommend); the study's *best* is its incumbent at the end, judged by its true value.
- ``best_regret``: optimum − the best's true value, the median over seeds (``best_regret_frac``:
  the same over the optimum).
- ``gpu_s_frac``: GPU-seconds of all trials (the simulated objective's ``sim_gpu_s``; CPU
  seconds, ``duration_s``, on the criteria study) over no pruning's, summed over seeds.
- ``pruned_frac``: trials pruned by the pruner over trials that counted.
- ``best_pruned``: seeds in which the pruner pruned a trial of the *best region*, though it
  would have won: a configuration of the optimum's family whose true value is above every
  configuration of the other families, and above the true value of the study's best.
- ``anytime_auc``: the area under the incumbent's true value over the optimum, against
  GPU-seconds spent, from 0 to no pruning's GPU-seconds of that seed (a run that ends sooner
  keeps its last value), over that budget: 1.0 would be the optimum found at no cost; the
  median over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import Settings, compose
from hpo.errors import HpoError
from hpo.sim import Workload, load_workload
from hpo.sim.objective import GPU_SECONDS_ATTR
from hpo.supervisor import Supervisor

PRUNERS: dict[str, tuple[str, ...]] = {
    "none": ("pruner=none",),
    "median": ("pruner=median",),
    "asha": ("pruner=successive_halving",),
    "hyperband": ("pruner=hyperband",),
    "hpo": ("pruner=patient_hyperband",),
}
DEFAULT = "hpo"  # hpo's default pruner, as it ships
OPTUNA = ("median", "asha", "hyperband")
WORKLOADS = ("criteria24", "bench/workloads/bloom24.yaml", "bench/workloads/noisy24.yaml")
CRITERIA = "criteria_cpu"  # the cross-check's name in the JSON


@dataclass(frozen=True)
class Truth:
    """What a workload says a configuration is worth (``value`` None: its observed value)."""

    optimum: float
    value: Callable[[dict[str, Any]], float] | None = None
    region_floor: float | None = None  # true values above this are the best region

    def of(self, trial: FrozenTrial) -> float:
        if self.value is None:
            assert trial.value is not None
            return trial.value
        return self.value(dict(trial.params))


def truth_of(wl: Workload) -> Truth:
    """The workload's optimum, true values and best region (see the module's definitions)."""
    families = [str(f) for f in wl.space[wl.family_param]["choices"]]
    best_family = max(families, key=lambda f: _family_best(wl, f))
    floor = max((_family_best(wl, f) for f in families if f != best_family), default=0.0)
    return Truth(wl.optimum(), wl.true_value, floor)


def _family_best(wl: Workload, family: str) -> float:
    curve, lr = wl.families[family].curve, wl.space.get("lr")
    params: dict[str, Any] = {wl.family_param: family}
    if lr is not None:
        params["lr"] = min(max(curve.best_lr, float(lr["low"])), float(lr["high"]))
    return curve.best(params, wl.epochs)


# ---- metrics of one run, and over seeds ----


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that ran to a result (complete, or pruned by the pruner), in completion order."""
    ran = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        or (t.state == TrialState.PRUNED and t.user_attrs.get("end_reason", "pruned") == "pruned")
    ]
    return sorted(ran, key=lambda t: (t.datetime_complete or t.datetime_start, t.number))


def run_metrics(trials: Sequence[FrozenTrial], truth: Truth, cost_key: str) -> dict[str, Any]:
    """One run's figures: cost, the best's true value, pruned trials, the anytime curve."""
    cost, best_obs, best_true = 0.0, float("-inf"), 0.0
    curve: list[tuple[float, float]] = []
    for t in counted(trials):
        cost += float(t.user_attrs.get(cost_key, 0.0))
        if t.state == TrialState.COMPLETE and t.value is not None and t.value > best_obs:
            best_obs, best_true = t.value, truth.of(t)
        curve.append((cost, best_true))
    pruned = [t for t in counted(trials) if t.state == TrialState.PRUNED]
    lost = None
    if truth.region_floor is not None:
        bar = max(truth.region_floor, best_true)
        lost = any(truth.of(t) > bar for t in pruned)
    return {
        "cost": round(cost, 4),
        "best_true": round(best_true, 5),
        "regret": round(truth.optimum - best_true, 5),
        "n": len(counted(trials)),
        "pruned": len(pruned),
        "best_pruned": lost,
        "curve": [(round(x, 4), round(y, 5)) for x, y in curve],
    }


def anytime_auc(curve: Sequence[Sequence[float]], budget: float, optimum: float) -> float:
    """Area under incumbent / optimum against cost, from 0 to ``budget``, over ``budget``."""
    if budget <= 0:
        return 0.0
    area, last_x, last_y = 0.0, 0.0, 0.0
    for x, y in curve:
        x = min(x, budget)
        area += (x - last_x) * last_y
        last_x, last_y = x, y / optimum
    area += (budget - last_x) * last_y
    return area / budget


def aggregate(runs: dict[str, list[dict[str, Any]]], optimum: float) -> dict[str, Any]:
    """Per pruner, the benchmark's figures over seeds (runs[p][i]: pruner p's run of seed i)."""
    first = next(iter(runs.values()))
    budgets = [r["cost"] for r in runs.get("none", first)]
    if "none" not in runs:
        budgets = [max(runs[p][i]["cost"] for p in runs) for i in range(len(first))]
    out: dict[str, Any] = {}
    for name, seeds in runs.items():
        aucs = [anytime_auc(r["curve"], b, optimum) for r, b in zip(seeds, budgets, strict=True)]
        regret = statistics.median(r["regret"] for r in seeds)
        lost = [r["best_pruned"] for r in seeds]
        out[name] = {
            "best_regret": round(regret, 5),
            "best_regret_frac": round(regret / optimum, 5),
            "gpu_s_frac": round(sum(r["cost"] for r in seeds) / max(1e-12, sum(budgets)), 3),
            "pruned_frac": round(
                sum(r["pruned"] for r in seeds) / max(1, sum(r["n"] for r in seeds)), 3
            ),
            "best_pruned": None if None in lost else sum(bool(x) for x in lost),
            "anytime_auc": round(statistics.median(aucs), 4),
            "seeds": [{k: v for k, v in r.items() if k != "curve"} for r in seeds],
        }
    return out


# ---- running the studies ----


def sim_overrides(args: argparse.Namespace, workload: str, pruner: str, seed: int) -> list[str]:
    """The composed settings of one simulated study (``storage.dir`` and name added later)."""
    declared = load_workload(workload).scaling
    scaling = [f"study.memory.scaling=[{','.join(declared)}]"] if declared else []
    return [
        "study=simulated",
        f"study.workload={workload}",
        f"study.n_trials={args.trials}",
        f"study.time_scale={args.time_scale}",
        *scaling,
        *_common(args, pruner, seed),
    ]


def criteria_overrides(args: argparse.Namespace, pruner: str, seed: int) -> list[str]:
    """The built-in criteria study, small, on CPU."""
    return [
        "study=criteria",
        "study.device=cpu",
        f"study.n_trials={args.criteria_trials}",
        f"study.epochs={args.criteria_epochs}",
        "study.data.n_train=512",  # half the study's data: minutes, not a quarter of an hour
        "study.data.n_val=256",
        *_common(args, pruner, seed),
    ]


def _common(args: argparse.Namespace, pruner: str, seed: int) -> list[str]:
    return [
        "sampler=tpe",
        f"sampler.seed={seed}",
        f"par={args.par}",
        "faults.recycle_after=0",
        "max_failures_in_a_row=1000000",
        "log_level=WARNING",
        *PRUNERS[pruner],
        *args.override,
    ]


def run_supervised(overrides: list[str], workdir: Path, name: str) -> list[FrozenTrial]:
    """One study under the real supervisor; its trials."""
    cfg = compose([*overrides, f"study.name={name}", f"storage.dir={workdir}"])
    Supervisor(Settings.from_config(cfg), poll_s=0.05).run()
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / name}.db")
    return study.get_trials(deepcopy=False)


def run_inprocess(overrides: list[str], wl: Workload, trials: int, seed: int) -> list[FrozenTrial]:
    """The same study in this process, one trial at a time, without the supervisor, cards or
    time (seconds): for exploring pruner settings before a real run, not for the table."""
    settings = Settings.from_config(compose(overrides))
    study = optuna.create_study(
        study_name=f"q-{seed}",  # the name and trial number pick a trial's Hyperband bracket
        direction="maximize",
        sampler=settings.make_sampler(seed),
        pruner=settings.make_pruner(),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        for name, dist in wl.space.items():
            _suggest(trial, name, dist)
        family, best = wl.family(trial.params), 0.0
        per_epoch = min(1.0, family.demand.value(trial.params)) * family.epoch_s
        for epoch in range(1, wl.epochs + 1):
            value = family.curve.value(trial.params, epoch, seed=trial.number)
            best = max(best, value)
            trial.report(value, epoch)
            trial.set_user_attr(GPU_SECONDS_ATTR, per_epoch * epoch)
            if epoch < wl.epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study.optimize(objective, n_trials=trials)
    return study.get_trials(deepcopy=False)


def _suggest(trial: optuna.Trial, name: str, dist: dict[str, Any]) -> None:
    if dist.get("choices"):
        trial.suggest_categorical(name, list(dist["choices"]))
    elif dist.get("type") == "int":
        trial.suggest_int(name, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log")))
    else:
        trial.suggest_float(
            name, float(dist["low"]), float(dist["high"]), log=bool(dist.get("log"))
        )


def bench_workload(
    args: argparse.Namespace, workload: str, root: Path, pool: Any
) -> dict[str, Any]:
    """Every pruner over every seed on one simulated workload (``pool``: runs the studies)."""
    wl = load_workload(workload)
    truth = truth_of(wl)
    tasks = [(p, seed) for seed in range(args.seeds) for p in args.pruners]
    if args.inprocess:
        found = [
            run_inprocess(sim_overrides(args, workload, p, seed), wl, args.trials, seed)
            for p, seed in tasks
        ]
    else:
        found = list(
            pool.map(
                _timed_study,
                [sim_overrides(args, workload, p, seed) for p, seed in tasks],
                [root / wl.name / p for p, _ in tasks],
                [f"q-{seed}" for _, seed in tasks],
            )
        )
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.pruners}
    for (pruner, seed), trials in zip(tasks, found, strict=True):
        runs[pruner].append(run_metrics(trials, truth, GPU_SECONDS_ATTR))
        _progress(wl.name, pruner, seed, runs[pruner][-1])
    return _workload_result(truth.optimum, runs, "true optimum")


def _timed_study(overrides: list[str], workdir: Path, name: str) -> list[FrozenTrial]:
    t0 = time.monotonic()
    trials = run_supervised(overrides, workdir, name)
    print(
        f"{workdir.parent.name} {workdir.name} {name}: {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
    )
    return trials


def bench_criteria(args: argparse.Namespace, root: Path, pool: Any) -> dict[str, Any]:
    """The criteria study on CPU: every pruner over its seeds; the optimum is the best seen."""
    tasks = [(p, seed) for seed in range(args.criteria_seeds) for p in args.pruners]
    found = list(
        pool.map(
            _timed_study,
            [criteria_overrides(args, p, seed) for p, seed in tasks],
            [root / CRITERIA / p for p, _ in tasks],
            [f"q-{seed}" for _, seed in tasks],
        )
    )
    values = [t.value for trials in found for t in trials if t.value is not None]
    truth = Truth(max(values, default=1.0))
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.pruners}
    for (pruner, seed), trials in zip(tasks, found, strict=True):
        runs[pruner].append(run_metrics(trials, truth, "duration_s"))
        _progress(CRITERIA, pruner, seed, runs[pruner][-1])
    return _workload_result(truth.optimum, runs, "best value seen")


def _workload_result(
    optimum: float, runs: dict[str, list[dict[str, Any]]], kind: str
) -> dict[str, Any]:
    return {
        "optimum": round(optimum, 5),
        "optimum_kind": kind,
        "default": DEFAULT,
        "pruners": aggregate(runs, optimum),
        "curves": {p: [r["curve"] for r in rs] for p, rs in runs.items()},
    }


def _progress(name: str, pruner: str, seed: int, row: dict[str, Any]) -> None:
    print(
        f"{name} {pruner} seed {seed}: regret {row['regret']} cost {row['cost']} "
        f"pruned {row['pruned']}/{row['n']}",
        file=sys.stderr,
    )


# ---- the report ----


def judge(result: dict[str, Any], late_bloomer: str) -> dict[str, Any]:
    """The issue's targets, per workload: True when hpo's default meets them."""
    out: dict[str, Any] = {}
    for name, wl in result["workloads"].items():
        p, opt = wl["pruners"], wl["optimum"]
        if DEFAULT not in p or "none" not in p:
            continue
        hpo, none = p[DEFAULT], p["none"]
        optuna_best = max((p[o]["anytime_auc"] for o in OPTUNA if o in p), default=0.0)
        row = {
            "regret_within_0.5pct": hpo["best_regret"] - none["best_regret"] <= 0.005 * opt,
            "gpu_s_frac_at_most_0.5": hpo["gpu_s_frac"] <= 0.5,
            "auc_at_least_optuna_best": hpo["anytime_auc"] >= optuna_best,
        }
        if name == late_bloomer:
            row["no_best_pruned"] = hpo["best_pruned"] == 0
        out[name] = row
    return out


COLS = (
    "best_regret",
    "best_regret_frac",
    "gpu_s_frac",
    "pruned_frac",
    "best_pruned",
    "anytime_auc",
)


def print_table(result: dict[str, Any]) -> None:
    for name, wl in result["workloads"].items():
        print(f"\n{name} (optimum {wl['optimum']}, {wl['optimum_kind']})")
        print(f"{'pruner':12}" + "".join(f"{c:>18}" for c in COLS))
        for pruner, row in wl["pruners"].items():
            cells = "".join(f"{'-' if row[c] is None else row[c]:>18}" for c in COLS)
            print(f"{pruner:12}{cells}")
    for name, row in result.get("targets", {}).items():
        print(f"targets {name}: {row}")


def plot(result: dict[str, Any], path: str) -> None:
    """The anytime curves: the incumbent's true value over the optimum against GPU-seconds
    (a fraction of no pruning's), the mean over seeds, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["workloads"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    grid = [i / 200 for i in range(201)]
    for ax, name in zip(axes[0], names, strict=True):
        wl = result["workloads"][name]
        for pruner, curves in wl["curves"].items():
            budgets = [c[-1][0] if c else 1.0 for c in wl["curves"].get("none", curves)]
            ys = [_step(c, b, wl["optimum"], grid) for c, b in zip(curves, budgets, strict=True)]
            mean = [statistics.fmean(col) for col in zip(*ys, strict=True)]
            style = "-" if pruner in ("none", DEFAULT) else "--"
            ax.plot(grid, mean, style, label=pruner, linewidth=2 if pruner == DEFAULT else 1.2)
        low = 0.8 if wl["optimum_kind"] == "true optimum" else 0.4  # where the pruners differ
        ax.set_ylim(low, 1.005)
        ax.set_title(f"{name} ({wl['optimum_kind']} {wl['optimum']:.3f})", fontsize=9)
        ax.set_xlabel("GPU-seconds / no pruning's")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best so far (true value) / optimum")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(
    curve: Sequence[Sequence[float]], budget: float, optimum: float, grid: list[float]
) -> list[float]:
    """The incumbent over the optimum at each fraction of ``budget`` in ``grid``."""
    out, i, y = [], 0, 0.0
    for g in grid:
        while i < len(curve) and curve[i][0] <= g * budget:
            y = curve[i][1] / optimum
            i += 1
        out.append(y)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--pruners", default=",".join(PRUNERS), help=f"of {', '.join(PRUNERS)}")
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds per workload (default 3)")
    p.add_argument("--trials", type=int, default=30, help="trials per study (default 30)")
    p.add_argument("--par", type=int, default=2, help="worker processes per study (default 2)")
    p.add_argument("--jobs", type=int, default=3, help="studies run side by side (default 3)")
    p.add_argument("--time-scale", type=float, default=0.002, help="wall s per simulated s")
    p.add_argument("--criteria-seeds", type=int, default=2, help="criteria on CPU; 0: skip it")
    p.add_argument("--criteria-trials", type=int, default=6, help="criteria trials per study")
    p.add_argument("--criteria-epochs", type=int, default=4, help="criteria epochs per trial")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE]",
                   help="one more pruner: its config overrides (repeatable)")  # fmt: skip
    p.add_argument("--inprocess", action="store_true",
                   help="simulated studies in this process, one at a time (exploring)")  # fmt: skip
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every study (repeatable)")  # fmt: skip
    p.add_argument("--json", dest="json_out", help="write the results here")
    p.add_argument("--png", help="draw the anytime curves here")
    p.add_argument("--keep", help="keep the studies here (default: a temporary folder)")
    args = p.parse_args(argv)
    for variant in args.variant:
        name, _, overrides = variant.partition("=")
        if not name or not overrides:
            p.error(f"--variant must be NAME=OVERRIDE[,OVERRIDE], got {variant!r}")
        PRUNERS[name] = tuple(overrides.split(","))
    args.pruners = args.pruners.split(",") + [v.partition("=")[0] for v in args.variant]
    unknown = [x for x in args.pruners if x not in PRUNERS]
    if unknown:
        p.error(f"--pruners: unknown {', '.join(unknown)} (known: {', '.join(PRUNERS)})")
    if args.seeds < 1 or args.trials < 1:
        p.error(f"--seeds and --trials must be >= 1, got {args.seeds} and {args.trials}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    workloads = [w for w in args.workloads.split(",") if w]
    try:
        for w in workloads:
            load_workload(w)
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.keep and Path(args.keep).is_dir() and any(Path(args.keep).iterdir()):
        print(
            f"error: --keep: {args.keep} holds an earlier run; choose an empty folder",
            file=sys.stderr,
        )
        return 2
    result: dict[str, Any] = {"config": _config(args), "workloads": {}}
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="hpo-quality-") as tmp,
        ProcessPoolExecutor(max_workers=args.jobs, mp_context=spawn) as pool,
    ):
        root = Path(args.keep or tmp)
        for w in workloads:
            result["workloads"][load_workload(w).name] = bench_workload(args, w, root, pool)
        if args.criteria_seeds > 0 and not args.inprocess:
            result["workloads"][CRITERIA] = bench_criteria(args, root, pool)
    result["targets"] = judge(result, "bloom24")
    print_table(result)
    if args.png:
        plot(result, args.png)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result) + "\n")
    return 0


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("seeds", "trials", "par", "jobs", "time_scale", "criteria_seeds", "criteria_trials",
            "criteria_epochs", "inprocess", "override")  # fmt: skip
    out = {k: getattr(args, k) for k in keys}
    out["pruners"] = {p: list(PRUNERS[p]) for p in args.pruners}
    return out


if __name__ == "__main__":
    sys.exit(main())

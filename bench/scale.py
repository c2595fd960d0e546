"""Orchestration cost per trial as a study grows: hpo (par 2) against plain Optuna (2 processes).

Both run the toy study's curve with no sleep (``study.epoch_s=0``: the objective's own work is
near zero, so what remains is orchestration: ask, 12 reports and pruner checks, tell, and hpo's
supervisor), with the same sampler (TPE) and pruner (Patient Hyperband) on the same storage
kind. Orchestration ms per trial = the wall time between consecutive completions × the number
of processes running trials (2) − the objective's own time (≈ 0 here), averaged over the first
and over the last ``--window`` trials. Growth = last / first: what grows with the study.

    python -m bench.scale --trials 5000 --json /tmp/scale.json [--storages sqlite,postgres]
                          [--who hpo,optuna]

PostgreSQL comes from ``HPO_TEST_POSTGRES_URL`` (a fresh study name each run).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 2


def _completions(storage: str, name: str) -> list[float]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    done = [
        t.datetime_complete.timestamp()
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None and t.state.name in ("COMPLETE", "PRUNED")
    ]
    return sorted(done)


def per_trial_ms(times: list[float], window: int) -> dict[str, float]:
    """Mean gap between completions × processes, in the first and the last ``window``."""
    if len(times) < 2 * window + 1:
        raise ValueError(f"need more than {2 * window} finished trials, got {len(times)}")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    first = sum(gaps[:window]) / window * PROCESSES * 1000
    last = sum(gaps[-window:]) / window * PROCESSES * 1000
    return {"first_ms": round(first, 1), "last_ms": round(last, 1), "ratio": round(last / first, 3)}


def run_hpo(storage: str, name: str, trials: int, workdir: Path) -> float:
    args = [
        sys.executable, "-m", "hpo.cli", "tune", "--config-dir", str(ROOT / "hpo" / "conf"),
        "study=toy", f"study.name={name}", "study.epoch_s=0", "study.checkpoint=false",
        f"study.n_trials={trials}", "par=2", "sampler=tpe", "pruner=patient_hyperband",
        f"storage.url={storage}", "faults.checkpoints=false", "log_level=WARNING",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hpo tune failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.monotonic() - start


def _optuna_worker(storage: str, name: str, trials: int) -> None:
    import optuna
    from omegaconf import OmegaConf

    from hpo.config import compose
    from hpo.config.validate import instantiate_node
    from hpo.pruners import PatientHyperbandPruner
    from hpo.studies.toy import curve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose(["study=toy", "sampler=tpe"], str(ROOT / "hpo" / "conf"))
    epochs = int(cfg.study.epochs)
    space = OmegaConf.to_container(cfg.study.space)
    assert isinstance(space, dict)
    from hpo.config.space import build_space, suggest

    dists = build_space(space)
    pruner = PatientHyperbandPruner(min_resource=3, max_resource=epochs, reduction_factor=3)
    sampler = instantiate_node(OmegaConf.to_container(cfg.sampler, resolve=True), "sampler")
    sampler.reseed_rng()  # two processes must not propose the same parameters
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner, sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        params = {k: suggest(trial, k, d) for k, d in dists.items()}
        best = 0.0
        for epoch in range(1, epochs + 1):
            value = curve(params, epoch)
            best = max(best, value)
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study.optimize(objective, n_trials=trials)


def run_optuna(storage: str, name: str, trials: int) -> float:
    import optuna

    optuna.create_study(study_name=name, storage=storage, direction="maximize")
    ctx = mp.get_context("spawn")
    start = time.monotonic()
    share = [trials // PROCESSES + (1 if i < trials % PROCESSES else 0) for i in range(PROCESSES)]
    procs = [ctx.Process(target=_optuna_worker, args=(storage, name, n)) for n in share]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"an Optuna process exited with {proc.exitcode}")
    return time.monotonic() - start


def measure(
    kind: str, trials: int, window: int, workdir: Path, who_runs: tuple[str, ...]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for who in who_runs:
        name = f"scale-{who}-{uuid.uuid4().hex[:6]}"
        if kind == "sqlite":
            storage = f"sqlite:///{workdir / (name + '.db')}"
        else:
            storage = os.environ["HPO_TEST_POSTGRES_URL"]
        print(f"{kind}/{who}: {trials} trials ...", file=sys.stderr, flush=True)
        wall = (
            run_hpo(storage, name, trials, workdir)
            if who == "hpo"
            else run_optuna(storage, name, trials)
        )
        result = per_trial_ms(_completions(storage, name), window)
        out[who] = {**result, "wall_s": round(wall, 1)}
        print(f"{kind}/{who}: {out[who]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    p.add_argument("--trials", type=int, default=5000)
    p.add_argument("--window", type=int, default=250, help="first/last trials compared")
    p.add_argument("--storages", default="sqlite,postgres")
    p.add_argument("--who", default="hpo,optuna", help="which to run (default both)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.storages.split(",") if k.strip()]
    unknown = set(args.who.split(",")) - {"hpo", "optuna"}
    if unknown:
        p.error(f"--who takes hpo and optuna, got {sorted(unknown)}")
    if "postgres" in kinds and not os.environ.get("HPO_TEST_POSTGRES_URL"):
        p.error("postgres needs HPO_TEST_POSTGRES_URL")
    results: dict[str, Any] = {"trials": args.trials, "window": args.window}
    with tempfile.TemporaryDirectory(prefix="hpo-scale-") as tmp:
        for kind in kinds:
            who = tuple(w.strip() for w in args.who.split(",") if w.strip())
            results[kind] = measure(kind, args.trials, args.window, Path(tmp), who)
    print(f"{'storage':10} {'who':7} {'first_ms':>9} {'last_ms':>9} {'ratio':>6} {'wall_s':>7}")
    for kind in kinds:
        for who, r in results[kind].items():
            print(
                f"{kind:10} {who:7} {r['first_ms']:9} {r['last_ms']:9} {r['ratio']:6} "
                f"{r['wall_s']:7}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The command line both per-trial cost benches share (``bench.optimize_cost``,
``bench.sweep_cost``): each way of running (``hows``) at each objective duration, a table row
printed as each run ends, the whole table, and the runs as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Measure = Callable[[str, float, int, int], dict[str, Any]]  # (how, sleep_s, trials, par)


def main(
    prog: str,
    doc: str | None,
    default_trials: int,
    hows: Sequence[str],
    measure: Measure,
    table: Callable[[list[dict[str, Any]]], str],
    argv: list[str] | None = None,
) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc)
    p.add_argument(
        "--trials",
        type=int,
        default=default_trials,
        help=f"trials per run (default {default_trials})",
    )
    p.add_argument("--par", type=int, default=2, help="n_jobs and par (default 2)")
    p.add_argument("--sleeps", default="0,1", help="objective durations in seconds")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for sleep in (float(s) for s in args.sleeps.split(",")):
        for how in hows:
            rows.append(measure(how, sleep, args.trials, args.par))
            print(table(rows).splitlines()[-1], flush=True)
    print(table(rows))
    if args.json:
        results = {"trials": args.trials, "par": args.par, "runs": rows}
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0

"""Where a packing run's time goes: the card's lower bound, and admission replayed for free.

``python -m bench.packing_bound --db DIR/par1/packing-par1.db --study packing-par1``

Takes the configurations a study ran to a result (``python -m bench.packing --keep DIR`` keeps
every policy's study) and reports, in wall seconds at the benchmark's time scale:

- ``work_s``: their work one after another, alone on the card (fixed PAR=1 with no overheads);
- ``bound_s``: a lower bound on any schedule's wall time. Trials holding more than half the
  budget cannot share the card with each other, so they run one after another (``big_s``);
  the rest fill the memory beside them (where at least the smallest of them fits) and
  whatever memory × time is left over needs the whole budget;
- ``replay_s``: hpo's own admission (:mod:`hpo.scheduling.admission`,
  :mod:`hpo.scheduling.backlog`, durations learned as the supervisor learns them) told the
  true memory, replayed as events with no processes, no storage and no latency, with the
  workload's contention.

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

from hpo.contract import Decision
from hpo.devices import GIB, Device, DeviceSnapshot
from hpo.memory import Estimate
from hpo.scheduling.admission import AdmissionScheduler, Placement, Slot
from hpo.scheduling.backlog import Backlog, Waiting, place_next
from hpo.scheduling.durations import DurationModel
from hpo.sim import load_workload


class _Card(Device):
    """A card of the workload's capacity; the replay keeps its own books."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes

    @property
    def label(self) -> str:
        return "replay:0"

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(self.label, self._capacity, None, None)


def load_runs(db: Path, study: str) -> list[tuple[dict[str, Any], int]]:
    """(params, epochs reported) of the trials that ran to a result, in trial order."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """SELECT t.trial_id,
                 (SELECT COUNT(*) FROM trial_intermediate_values v WHERE v.trial_id = t.trial_id)
               FROM trials t JOIN studies s ON s.study_id = t.study_id
               JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'end_reason'
               WHERE s.study_name = ? AND a.value_json IN ('"complete"', '"pruned"')
               ORDER BY t.number""",
            (study,),
        ).fetchall()
        runs = []
        for trial_id, epochs in rows:
            params = con.execute(
                "SELECT param_name, param_value, distribution_json FROM trial_params "
                "WHERE trial_id = ?",
                (trial_id,),
            ).fetchall()
            runs.append(({name: _decode(v, d) for name, v, d in params}, int(epochs)))
        return runs
    finally:
        con.close()


def _decode(value: float, distribution_json: str) -> Any:
    dist = json.loads(distribution_json)
    if dist["name"] == "CategoricalDistribution":
        return dist["attributes"]["choices"][int(value)]
    return value


def lower_bound(trials: list[tuple[float, float]], budget_gib: float) -> tuple[float, float]:
    """(big_s, bound_s) for trials given as (footprint GiB, seconds alone)."""
    big = [(f, s) for f, s in trials if f > budget_gib / 2]
    rest = [(f, s) for f, s in trials if f <= budget_gib / 2]
    smallest = min((f for f, _ in rest), default=0.0)
    beside = sum((budget_gib - f) * s for f, s in big if budget_gib - f >= smallest)
    rest_gib_s = sum(f * s for f, s in rest)
    big_s = sum(s for _, s in big)
    return big_s, big_s + max(0.0, rest_gib_s - beside) / budget_gib


class Replay:
    """Admission by true memory over ``runs``, event by event, on one card."""

    def __init__(self, workload: Any, args: argparse.Namespace) -> None:
        self.wl, self.args, self.now = workload, args, 0.0
        ctx = int(workload.device.context_gib * GIB)
        card = _Card(int(workload.device.capacity_gib * GIB))
        self.sched = AdmissionScheduler([card], args.margin_frac, ctx, clock=lambda: self.now)
        self.backlog = Backlog(args.max_bypass, args.max_waiting)
        self.durations = DurationModel([workload.family_param])  # the study groups by family
        self.bound: dict[int, int | None] = dict.fromkeys(range(args.par))
        self.running: dict[int, tuple[int, dict[str, Any], float, float]] = {}  # n: w, p, left, t0

    def run(self, runs: list[tuple[dict[str, Any], int]]) -> float:
        pending = list(enumerate(runs))
        self._schedule(pending)
        while self.running:
            slowdown = max(1.0, sum(self._demand(p) for _, p, _, _ in self.running.values()))
            n, (worker, params, left, t0) = min(self.running.items(), key=lambda kv: kv[1][2])
            self.now += left * slowdown
            for key, (w, p, rest, start) in list(self.running.items()):
                self.running[key] = (w, p, rest - left, start)
            del self.running[n]
            self.sched.books.release(n)
            attrs = {"end_reason": "complete", "duration_s": self.now - t0}
            self.durations.observe(params, attrs)
            self._schedule(pending)
        return self.now

    def _demand(self, params: dict[str, Any]) -> float:
        return float(self.wl.family(params).demand.value(params))

    def _slots(self) -> list[Slot]:
        busy = {w for w, _, _, _ in self.running.values()}
        return [Slot(w, w not in busy, d) for w, d in self.bound.items()]

    def _act(self, item: Waiting, placement: Placement) -> bool:
        for worker in placement.reclaim:  # recycled at once (a real respawn takes a second)
            self.bound[worker] = None
        if placement.decision is not Decision.ADMIT:
            return False
        n, epochs = item.trial
        expected = self.durations.predict(item.params)
        ends_at = float("inf") if expected is None else self.now + expected
        self.sched.books.hold(n, placement, ends_at)
        self.bound[placement.worker] = placement.device
        work = epochs * self.wl.family(item.params).epoch_s * self.args.time_scale
        self.running[n] = (placement.worker, item.params, work, self.now)
        return True

    def _schedule(self, pending: list[tuple[int, tuple[dict[str, Any], int]]]) -> None:
        """As the supervisor: waiting trials in queue order, then new ones while they start."""
        for item in self.backlog.queue():
            self._offer(item)
        while pending and not self.backlog.full and any(s.idle for s in self._slots()):
            n, (params, epochs) = pending.pop(0)
            upper = self.wl.peak_bytes(params) * (1 + self.wl.noise_frac)
            upper += self.wl.device.context_gib * GIB
            item = Waiting((n, epochs), params, Estimate(upper, upper, "oracle", 1))
            self.backlog.add(item)
            if self._offer(item).decision is not Decision.ADMIT:
                return

    def _offer(self, item: Waiting) -> Placement:
        expected = self.durations.predict(item.params)
        placement = place_next(self.backlog, self.sched, item, self._slots(), expected)
        if self._act(item, placement):
            self.backlog.started(item)
        return placement


def measure(args: argparse.Namespace) -> dict[str, Any]:
    wl = load_workload(args.workload)
    runs = load_runs(Path(args.db), args.study)
    if not runs:
        raise ValueError(f"no trial of study {args.study!r} ran to a result in {args.db}")
    budget_gib = wl.device.capacity_gib * (1 - args.margin_frac)
    alone = []
    for params, epochs in runs:
        footprint = wl.peak_bytes(params) * (1 + wl.noise_frac) / GIB + wl.device.context_gib
        alone.append((footprint, epochs * wl.family(params).epoch_s * args.time_scale))
    big_s, bound_s = lower_bound(alone, budget_gib)
    work_s = sum(s for _, s in alone)
    replay_s = Replay(wl, args).run(runs)
    return {
        "trials": len(runs),
        "budget_gib": round(budget_gib, 2),
        "work_s": round(work_s, 1),
        "big_s": round(big_s, 1),
        "bound_s": round(bound_s, 1),
        "replay_s": round(replay_s, 1),
        "work_over_bound": round(work_s / bound_s, 3),
        "work_over_replay": round(work_s / replay_s, 3),
    }


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

"""Fault injection: does a study reach its trial count through every kind of crash?

``python -m bench.faults --trials 200 --par 8 --json OUT``

Runs the real ``hpo tune`` (toy study, SQLite) with injected faults from the study's knobs:
CUDA-style OOMs, device-side asserts, segfaults and hangs (past ``faults.trial_timeout_s``).
While it runs, the benchmark SIGKILLs random busy workers, and once ``--supervisor-kill-at`` of
the trials have finished it SIGKILLs the supervisor itself and runs the same command again.
A monitor snapshots the COMPLETE trials every half second. At the end it reads the database:

- ``finished_trials`` / ``target_trials``: COMPLETE + PRUNED trials, and ``study.n_trials``;
- ``stuck_running``: trials left RUNNING (and ``waiting_left``: retries never run);
- ``lost_complete``: trials seen COMPLETE that are not any more;
- ``fail_without_reason``: FAIL trials without a known ``end_reason``;
- ``locked_errors``: "database is locked" in the logs of both supervisor runs (workers log there);
- ``integrity_ok``: ``PRAGMA integrity_check``;
- ``max_detect_s``: from each worker SIGKILL to its trial's ``datetime_complete``;
- ``retried`` / ``resumed_from_checkpoint``: trials with ``retry_of`` / ``resumed_from_epoch``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
REASONS = {
    "complete",
    "pruned",
    "oom",
    "cuda_error",
    "worker_died",
    "timeout",
    "error",
    "interrupted",
}


def study_args(workdir: Path, trials: int, par: int) -> list[str]:
    """The ``hpo tune`` overrides: a toy study with every kind of fault switched on."""
    return [
        "study=toy", "study.name=faults", f"storage.dir={workdir / '_optuna'}",
        f"study.n_trials={trials}", f"par={par}", "study.epochs=9", "study.epoch_s=0.12",
        "study.fault_epoch=3", "study.oom_rate=0.03", "study.cuda_error_rate=0.04",
        "study.segfault_rate=0.04", "study.hang_rate=0.015", "study.hang_s=600",
        "faults.trial_timeout_s=8", "faults.retry_on=[worker_died,cuda_error,timeout]",
        "faults.recycle_after=10", "max_failures_in_a_row=40",
    ]  # fmt: skip


@dataclass
class Kill:
    """A worker the benchmark SIGKILLed while it ran a trial."""

    trial: int
    pid: int
    at: datetime.datetime


@dataclass
class Watch:
    """What the monitor and the killer saw during the run."""

    ever_complete: set[int] = field(default_factory=set)
    finished: int = 0
    kills: list[Kill] = field(default_factory=list)
    orphan_workers: int = 0  # workers still running 10 s after the supervisor was killed
    orphans_gone_s: float | None = None  # seconds until the killed supervisor's workers exited
    stop: threading.Event = field(default_factory=threading.Event)


def connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db, timeout=60)


def monitor(db: Path, watch: Watch) -> None:
    """Snapshot COMPLETE trials and the finished count every half second."""
    while not watch.stop.wait(0.5):
        if not db.exists():
            continue
        try:
            with connect(db) as conn:
                rows = conn.execute("select number, state from trials").fetchall()
        except sqlite3.Error:
            continue
        watch.ever_complete.update(n for n, s in rows if s == "COMPLETE")
        watch.finished = sum(s in ("COMPLETE", "PRUNED") for _, s in rows)


def workers_of(pid: int) -> list[int]:
    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return [p.pid for p in children if "spawn_main" in " ".join(_cmdline(p))]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def busy_workers(db: Path, supervisor: int) -> list[tuple[int, int]]:
    """``(trial number, worker pid)`` of RUNNING trials with progress, run by live workers."""
    alive = set(workers_of(supervisor))
    try:
        with connect(db) as conn:
            rows = conn.execute(
                "select t.number, a.value_json from trials t join trial_user_attributes a "
                "on a.trial_id = t.trial_id and a.key = 'worker_pid' where t.state = 'RUNNING' "
                "and exists (select 1 from trial_intermediate_values v "
                "where v.trial_id = t.trial_id)"
            ).fetchall()
    except sqlite3.Error:
        return []
    return [(n, int(pid)) for n, pid in rows if int(pid) in alive]


def kill_a_worker(db: Path, supervisor: int, watch: Watch, rng: random.Random) -> None:
    candidates = busy_workers(db, supervisor)
    if not candidates:
        return
    trial, pid = rng.choice(candidates)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    watch.kills.append(Kill(trial, pid, datetime.datetime.now()))


class Run:
    """The two ``hpo tune`` runs and the faults the benchmark adds to them."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.db = workdir / "_optuna" / "faults.db"
        self.cmd = [
            sys.executable, "-m", "hpo.cli", "tune", "--config-dir", str(ROOT / "hpo" / "conf"),
            *study_args(workdir, args.trials, args.par),
        ]  # fmt: skip
        self.watch = Watch()
        self.rng = random.Random(args.seed)
        self.logs: list[Path] = []
        self.exit_codes: list[int | None] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.workdir / f"run{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            return subprocess.Popen(self.cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def go(self, deadline: float) -> None:
        threading.Thread(target=monitor, args=(self.db, self.watch), daemon=True).start()
        first = self.start()
        kill_at = int(self.args.trials * self.args.supervisor_kill_at)
        self.harass(first, deadline, until=lambda: self.watch.finished >= kill_at)
        if first.poll() is None:
            workers = workers_of(first.pid)
            first.send_signal(signal.SIGKILL)
            self.exit_codes.append(first.wait())
            self.wait_for_orphans(workers, time.monotonic())
        else:
            self.exit_codes.append(first.returncode)
        second = self.start()
        self.harass(second, deadline, until=lambda: False)
        if second.poll() is None:
            second.kill()
        self.exit_codes.append(second.wait())
        self.watch.stop.set()

    def wait_for_orphans(self, workers: list[int], killed_at: float) -> None:
        """Workers must exit by themselves when their supervisor dies (zombies count as gone)."""
        while time.monotonic() - killed_at < 10.0:
            running = [p for p in workers if _running(p)]
            if not running:
                self.watch.orphans_gone_s = round(time.monotonic() - killed_at, 2)
                return
            time.sleep(0.1)
        self.watch.orphan_workers = len(running)

    def harass(self, proc: subprocess.Popen[bytes], deadline: float, until: Any) -> None:
        """SIGKILL a busy worker every ``--kill-every`` s (jittered) until ``until()``."""
        next_kill = time.monotonic() + self.args.kill_every
        while proc.poll() is None and not until() and time.monotonic() < deadline:
            time.sleep(0.2)
            if time.monotonic() >= next_kill and len(self.watch.kills) < self.args.worker_kills:
                kill_a_worker(self.db, proc.pid, self.watch, self.rng)
                next_kill = time.monotonic() + self.args.kill_every * self.rng.uniform(0.5, 1.5)


def analyse(run: Run, elapsed_s: float) -> dict[str, Any]:
    with connect(run.db) as conn:
        states = dict(conn.execute("select number, state from trials").fetchall())
        attrs: dict[int, dict[str, Any]] = {n: {} for n in states}
        for number, key, value in conn.execute(
            "select t.number, a.key, a.value_json from trial_user_attributes a "
            "join trials t on t.trial_id = a.trial_id"
        ):
            attrs[number][key] = json.loads(value)
        completed = dict(conn.execute("select number, datetime_complete from trials").fetchall())
        integrity = conn.execute("pragma integrity_check").fetchone()[0]
    complete_now = {n for n, s in states.items() if s == "COMPLETE"}
    reasons: dict[str, int] = {}
    for n, a in attrs.items():
        if states[n] not in ("RUNNING", "WAITING"):
            key = str(a.get("end_reason"))
            reasons[key] = reasons.get(key, 0) + 1
    logs = "".join(p.read_text(errors="replace") for p in run.logs)
    return {
        "finished_trials": sum(s in ("COMPLETE", "PRUNED") for s in states.values()),
        "target_trials": run.args.trials,
        "stuck_running": sum(s == "RUNNING" for s in states.values()),
        "waiting_left": sum(s == "WAITING" for s in states.values()),
        "lost_complete": len(run.watch.ever_complete - complete_now),
        "fail_without_reason": sum(
            s == "FAIL" and attrs[n].get("end_reason") not in REASONS for n, s in states.items()
        ),
        "locked_errors": logs.count("database is locked"),
        "integrity_ok": integrity == "ok",
        **detection(run.watch.kills, states, attrs, completed),
        "retried": sum("retry_of" in a for a in attrs.values()),
        "resumed_from_checkpoint": sum(a.get("resumed_from_epoch", 0) > 0 for a in attrs.values()),
        "reaped_after_restart": sum("left RUNNING" in str(a.get("error")) for a in attrs.values()),
        "orphan_workers_after_supervisor_kill": run.watch.orphan_workers,
        "orphans_exited_after_s": run.watch.orphans_gone_s,
        "workers_recycled": logs.count("recycling worker"),
        "end_reasons": dict(sorted(reasons.items())),
        "trials_total": len(states),
        "supervisor_exit_codes": run.exit_codes,
        "elapsed_s": round(elapsed_s, 1),
        "par": run.args.par,
    }  # fmt: skip


def detection(
    kills: list[Kill], states: dict[int, str], attrs: dict[int, dict[str, Any]], done: dict
) -> dict[str, Any]:
    """Seconds from each worker kill to its trial's end, for kills that ended the trial."""
    delays = []
    for kill in kills:
        a = attrs.get(kill.trial, {})
        if states.get(kill.trial) != "FAIL" or "SIGKILL" not in str(a.get("error")):
            continue  # the trial had ended just before the signal landed
        ended = datetime.datetime.fromisoformat(done[kill.trial])
        delays.append((ended - kill.at).total_seconds())
    return {
        "worker_kills": len(kills),
        "detected_kills": len(delays),
        "max_detect_s": round(max(delays), 3) if delays else None,
        "median_detect_s": round(sorted(delays)[len(delays) // 2], 3) if delays else None,
    }


def verdict(r: dict[str, Any]) -> list[str]:
    """The checks of issue 5 that failed (empty when all hold)."""
    checks = {
        "finished_trials == target_trials": r["finished_trials"] == r["target_trials"],
        "stuck_running == 0": r["stuck_running"] == 0,
        "lost_complete == 0": r["lost_complete"] == 0,
        "fail_without_reason == 0": r["fail_without_reason"] == 0,
        "locked_errors == 0": r["locked_errors"] == 0,
        "integrity_ok": r["integrity_ok"],
        "max_detect_s <= 5": r["max_detect_s"] is not None and r["max_detect_s"] <= 5,
        "resumed_from_checkpoint > 0": r["resumed_from_checkpoint"] > 0,
    }
    return [name for name, ok in checks.items() if not ok]


def print_table(r: dict[str, Any]) -> None:
    width = max(len(k) for k in r)
    for key, value in r.items():
        print(f"{key:<{width}}  {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=200, help="study.n_trials (default 200)")
    p.add_argument("--par", type=int, default=8, help="worker processes (default 8)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--seed", type=int, default=0, help="seed of the benchmark's own choices")
    p.add_argument("--kill-every", type=float, default=4.0, help="mean seconds between kills")
    p.add_argument("--worker-kills", type=int, default=20, help="most worker SIGKILLs")
    p.add_argument("--supervisor-kill-at", type=float, default=0.4, help="finished share")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.add_argument("--workdir", type=Path, help="keep the study and logs here (default: temp)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpo-faults-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = Run(args, workdir)
        start = time.monotonic()
        run.go(deadline=start + args.timeout)
        result = analyse(run, time.monotonic() - start)
    result["failed_checks"] = verdict(result)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["failed_checks"] else 0


if __name__ == "__main__":
    sys.exit(main())

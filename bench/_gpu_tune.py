"""Parts ``tune_par2`` and ``tune_auto`` of ``bench.gpu_check``: a real study for a fixed wall time.

``hpo tune`` runs in a child process (the study of the spec, ``memory.capacity_gib`` of the
spec, ``par=2`` or ``par=auto``, its own storage directory) for ``wall_s`` seconds from launch;
then it is asked to stop as a user would: SIGINT (finish the running trials, start no more),
after ``drain_s`` a second SIGINT (stop now, running trials end FAIL ``interrupted``), after
``stop_s`` SIGKILL of it and its workers. A thread samples the study's devices meanwhile
(NVML memory and utilisation on a GPU, the card's ledger on a simulated one).

From the SQLite database: ``trials_per_hour`` = trials that ended on their own (any state; not
pre-pruned, not interrupted) by the first SIGINT, per hour of ``wall_s``; OOMs, pre-pruned
trials and end reasons over the whole run. The database is copied to ``<out>/<part>.db``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

import psutil

from bench._gpu_parts import PartContext, child_env

if TYPE_CHECKING:
    from hpo.config.settings import DeviceSettings

N_TRIALS = 100_000  # never reached: the run is stopped after its wall time
NOT_RUN = ("memory_estimate", "interrupted")  # end reasons that do not count as throughput


class DeviceSampler(threading.Thread):
    """Reads every device of the study each ``interval_s``: (seconds, label, used MiB, util)."""

    def __init__(self, settings: DeviceSettings, interval_s: float) -> None:
        super().__init__(name="device-sampler", daemon=True)
        self._settings = settings
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._start = time.monotonic()
        self.samples: list[tuple[float, str, float | None, float | None]] = []
        self.error: str | None = None

    def run(self) -> None:
        from hpo.devices import open_devices

        devices = None
        while not self._stop_event.wait(self._interval_s):
            try:
                if devices is None:  # a simulated card exists once the study created it
                    devices = [d for d in open_devices(self._settings, True) if d.has_memory]
                for d in devices:
                    snap = d.snapshot()
                    used = None if snap.used_bytes is None else snap.used_bytes / 2**20
                    t = time.monotonic() - self._start
                    self.samples.append((t, snap.label, used, snap.utilization))
                self.error = None
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def summary(self, until_s: float) -> dict[str, Any]:
        """Per device: mean and max of memory used and utilisation over the first ``until_s``."""
        out: dict[str, Any] = {}
        for label in sorted({s[1] for s in self.samples}):
            rows = [s for s in self.samples if s[1] == label and s[0] <= until_s]
            used = [s[2] for s in rows if s[2] is not None]
            util = [s[3] for s in rows if s[3] is not None]
            out[label] = {
                "samples": len(rows),
                "used_mib_mean": round(mean(used), 1) if used else None,
                "used_mib_max": round(max(used), 1) if used else None,
                "util_mean": round(mean(util), 3) if util else None,
                "util_max": round(max(util), 3) if util else None,
            }
        return out


def run_tune(ctx: PartContext) -> None:
    from hpo.config import Settings, compose

    spec = ctx.spec
    par = "2" if ctx.name == "tune_par2" else "auto"
    store = Path(spec.work) / ctx.name
    store.mkdir(parents=True, exist_ok=True)
    conf = str(Path(spec.root) / "hpo" / "conf")
    overrides = [
        f"study={spec.tune_study}", f"memory.capacity_gib={spec.capacity_gib:g}", f"par={par}",
        f"study.n_trials={N_TRIALS}", *spec.tune_args, f"storage.dir={store}",
    ]  # fmt: skip
    settings = Settings.from_config(compose(overrides, conf))
    db = store / f"{settings.study.name}.db"
    r = ctx.result
    r |= {"command": "hpo tune " + " ".join(overrides[:-1]), "par": par, "wall_s": spec.wall_s}
    ctx.say(f"{r['command']} for {spec.wall_s:g} s")
    ctx.save()
    sampler = DeviceSampler(settings.devices, spec.sample_interval_s)
    cmd = [sys.executable, "-m", "hpo.cli", "tune", "--config-dir", conf, *overrides]
    with ctx.log_path.open("a") as log:
        proc = subprocess.Popen(
            cmd, cwd=store, stdout=log, stderr=subprocess.STDOUT, env=child_env(spec.root)
        )
    sampler.start()
    start, launched = time.monotonic(), datetime.now()
    exited = _wait(proc, spec.wall_s)
    window_s, stop_clock = time.monotonic() - start, datetime.now()
    r["stopped_by"] = "exited by itself" if exited else _stop(proc, spec.drain_s, spec.stop_s)
    r["returncode"] = proc.returncode
    r["elapsed_s"] = round(time.monotonic() - start, 1)
    sampler.stop()
    r["devices"] = sampler.summary(window_s)
    if sampler.error and not sampler.samples:
        r["devices_error"] = sampler.error
    r |= _par_line(ctx.log_path)
    if db.exists():
        r |= trial_counts(db, launched, stop_clock, window_s)
        _copy_db(db, Path(spec.out) / f"{ctx.name}.db")
    ctx.say(_describe(r))
    if exited and proc.returncode != 0:
        ctx.finish("failed", f"hpo tune exited with {proc.returncode}: {ctx.log_tail(1)}")
    elif not db.exists():
        ctx.finish("failed", f"no study database at {db}")
    else:
        ctx.finish("ok")


def _wait(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _stop(proc: subprocess.Popen[bytes], drain_s: float, stop_s: float) -> str:
    """SIGINT, then SIGINT again, then SIGKILL of the process and its descendants."""
    proc.send_signal(signal.SIGINT)
    if _wait(proc, drain_s):
        return "SIGINT (drained)"
    proc.send_signal(signal.SIGINT)
    if _wait(proc, stop_s):
        return "SIGINT twice (stopped now)"
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    for child in family:
        try:
            child.kill()
        except psutil.Error:
            pass
    proc.kill()
    proc.wait()
    return "SIGKILL"


def _par_line(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "par=auto" in ln]
    return {"par_auto_decision": lines[-1].split(" ", 1)[-1].strip()} if lines else {}


def trial_counts(
    db: Path, launched: datetime, stop_clock: datetime, window_s: float
) -> dict[str, Any]:
    """Throughput, OOMs and end reasons from the study's database."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        trials = conn.execute(
            "select trial_id, state, datetime_start, datetime_complete from trials"
        ).fetchall()
        attrs: dict[int, dict[str, Any]] = {}
        for tid, key, value in conn.execute(
            "select trial_id, key, value_json from trial_user_attributes"
        ):
            attrs.setdefault(tid, {})[key] = json.loads(value)
    starts = [datetime.fromisoformat(str(t[2])) for t in trials if t[2] is not None]
    by_state: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    in_window, durations, peaks = 0, [], []
    for tid, state, _, completed in trials:
        a = attrs.get(tid, {})
        reason = a.get("end_reason")
        by_state[state] = by_state.get(state, 0) + 1
        if reason:
            by_reason[reason] = by_reason.get(reason, 0) + 1
        if completed is None or reason in NOT_RUN:
            continue
        if datetime.fromisoformat(str(completed)) <= stop_clock:
            in_window += 1
        if isinstance(a.get("duration_s"), (int, float)):
            durations.append(float(a["duration_s"]))
        if isinstance(a.get("peak_vram_mib"), (int, float)):
            peaks.append(float(a["peak_vram_mib"]))
    return {
        # launch to the first trial's start: config, prior tracing, workers, CUDA
        "first_trial_after_s": round((min(starts) - launched).total_seconds(), 1)
        if starts
        else None,
        "trials": len(trials),
        "by_state": by_state,
        "by_end_reason": by_reason,
        "finished_in_window": in_window,
        "trials_per_hour": round(in_window * 3600 / window_s, 1) if window_s > 0 else None,
        "oom": by_reason.get("oom", 0),
        "pre_pruned": by_reason.get("memory_estimate", 0),
        "interrupted": by_reason.get("interrupted", 0),
        "trial_duration_s_mean": round(mean(durations), 2) if durations else None,
        "peak_vram_mib_max": max(peaks) if peaks else None,
    }


def _copy_db(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    with closing(sqlite3.connect(f"file:{src}?mode=ro", uri=True)) as a:
        with closing(sqlite3.connect(dst)) as b:
            a.backup(b)


def _describe(r: dict[str, Any]) -> str:
    util = [d["util_mean"] for d in r.get("devices", {}).values() if d["util_mean"] is not None]
    return (
        f"{r.get('finished_in_window', 0)} trial(s) ended in {r['wall_s']:g} s "
        f"({r.get('trials_per_hour')} /h), {r.get('oom', 0)} OOM, "
        f"{r.get('pre_pruned', 0)} pre-pruned, mean util "
        f"{round(mean(util), 2) if util else None}; stopped by {r['stopped_by']}"
    )

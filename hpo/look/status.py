"""``hpo status``: a live terminal view of a study, read from its storage (and the devices).

It only SELECTs (through :class:`~hpo.look.db.StudyDB`, which creates no file), so it can run
from another terminal or node while the study runs without taking a write lock. Devices come
from :mod:`hpo.devices` when that layer is installed (NVIDIA through NVML, simulated GPUs from
their ledgers, only read: no lock file, no write), else straight from NVML; a CPU-only machine
shows none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpo.contract import RUN_BASE_ATTR, RUN_TARGET_ATTR, UNLIMITED_TRIALS
from hpo.look import queries
from hpo.look.db import Row, StudyDB, StudyRef
from hpo.look.nodes import NodeView, read_nodes

if TYPE_CHECKING:
    from rich.console import RenderableType

    from hpo.config.settings import DeviceSettings

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
RECENT = 5  # finished trials shown under the running ones
RATE_WINDOW = 50  # the ETA's rate: the latest finished trials, up to now
_MEMORY_ATTRS = ("est_vram_mib", "peak_vram_mib", "peak_rss_mib")


@dataclass
class TrialView:
    """One trial as the view shows it."""

    number: int
    state: str
    seconds: float | None  # running for / ran for
    params: str
    attrs: dict[str, Any]
    step: int | None = None  # last reported epoch
    live_rss_mib: float | None = None  # RSS of the worker (and children) now, when on this host
    value: float | None = None  # objective value of a COMPLETE trial


@dataclass
class DeviceView:
    """One device reading (memory in MiB)."""

    label: str
    capacity_mib: float | None
    used_mib: float | None
    utilization: float | None


@dataclass
class Snapshot:
    """Everything one frame of ``hpo status`` shows."""

    study: str
    url: str
    target: int | None  # the running (or last) run's study.n_trials, else the config's
    counts: dict[str, int]
    elapsed_s: float | None
    running: list[TrialView] = field(default_factory=list)
    recent: list[TrialView] = field(default_factory=list)
    devices: list[DeviceView] = field(default_factory=list)
    finished_before_run: int | None = None  # finished trials when that run started
    nodes: list[NodeView] = field(default_factory=list)  # the supervisors of the study
    per_hour: float | None = None  # finished trials per hour lately, while trials run

    @property
    def eta_s(self) -> float | None:
        """Seconds to the target at the recent rate (None: no target, not running, no rate)."""
        if not self.target or not self.per_hour or self.finished >= self.target:
            return None
        return 3600.0 * (self.target - self.finished) / self.per_hour

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def take_snapshot(db: StudyDB, devices: list[DeviceView] | None = None) -> Snapshot:
    """Read one frame from the storage."""
    counts = {r["state"]: int(r["n"]) for r in db.rows(queries.STATE_COUNTS)}
    now = dt.datetime.now()
    running = [_running_view(db, row, now) for row in db.rows(queries.RUNNING_TRIALS)]
    recent = [_finished_view(db, row) for row in db.rows(queries.RECENT_TRIALS, limit=RECENT)]
    run = {r["key"]: json.loads(r["value_json"]) for r in db.rows(queries.RUN_ATTRS)}
    target = run.get(RUN_TARGET_ATTR, db.ref.n_trials)
    target = None if target == UNLIMITED_TRIALS else target  # hpo.optimize(n_trials=None)
    return Snapshot(
        db.ref.name,
        db.ref.shown,
        int(target) if target is not None else None,
        counts,
        _elapsed(db, now, bool(running)),
        running,
        recent,
        devices or [],
        run.get(RUN_BASE_ATTR),
        read_nodes(db),
        _per_hour(db, now, _by_this_run(counts, run.get(RUN_BASE_ATTR))) if running else None,
    )


def _by_this_run(counts: dict[str, int], base: Any) -> int:
    """Trials the running run finished (all finished ones when its start is unknown)."""
    finished = counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
    return finished - int(base) if isinstance(base, int) else finished


def _per_hour(db: StudyDB, now: dt.datetime, this_run: int) -> float | None:
    """Finished trials per hour over the latest ``RATE_WINDOW`` of this run's, up to now."""
    rows = db.rows(queries.RECENT_COMPLETIONS, limit=min(RATE_WINDOW, this_run))
    times = [t for r in rows if (t := _parse_time(r["datetime_complete"])) is not None]
    if len(times) < 2:
        return None
    span = (now - min(times)).total_seconds()
    return 3600.0 * len(times) / span if span > 0 else None


def _elapsed(db: StudyDB, now: dt.datetime, running: bool) -> float | None:
    times = db.rows(queries.STUDY_TIMES)[0]
    start = _parse_time(times["first_start"])
    end = now if running else _parse_time(times["last_complete"])
    return (end - start).total_seconds() if start and end else None


def _running_view(db: StudyDB, row: Row, now: dt.datetime) -> TrialView:
    start = _parse_time(row["datetime_start"])
    view = _trial_view(db, row, "RUNNING", (now - start).total_seconds() if start else None)
    view.step = db.rows(queries.LAST_STEP, trial_id=row["trial_id"])[0]["step"]
    pid = view.attrs.get("worker_pid")
    if pid is None:  # asked, not yet admitted: it waits for memory (hpo.supervisor.launcher)
        view.state = "WAITING"
    view.live_rss_mib = _tree_rss_mib(pid) if isinstance(pid, int) else None
    return view


def _finished_view(db: StudyDB, row: Row) -> TrialView:
    view = _trial_view(db, row, row["state"], None)
    seconds = view.attrs.get("duration_s")
    view.seconds = float(seconds) if isinstance(seconds, (int, float)) else None
    view.value = row["value"]
    return view


def _trial_view(db: StudyDB, row: Row, state: str, seconds: float | None) -> TrialView:
    params = db.rows(queries.TRIAL_PARAMS, trial_id=row["trial_id"])
    attrs = {
        r["key"]: json.loads(r["value_json"])
        for r in db.rows(queries.TRIAL_ATTRS, trial_id=row["trial_id"])
    }
    text = " ".join(f"{p['name']}={_short(p['value'])}" for p in params)
    return TrialView(int(row["number"]), state, seconds, text, attrs)


def _short(value: str | None) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)
    return value if value and number.is_integer() else f"{number:.3g}"  # type: ignore[return-value]


def _parse_time(text: Any) -> dt.datetime | None:
    if isinstance(text, dt.datetime):
        return text
    return dt.datetime.fromisoformat(str(text)) if text else None


def _tree_rss_mib(pid: int) -> float | None:
    """RSS of a worker and its children now, if it runs on this host as a Python process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if "python" not in proc.name().lower():
            return None
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / MIB
    except (psutil.Error, OSError):
        return None


def read_devices(devices: DeviceSettings | None) -> list[DeviceView]:
    """The study's devices now (opened read-only: simulated cards' ledgers are only read);
    NVML's GPUs when the study's devices are unknown."""
    if devices is None:
        return _nvml_devices()
    from hpo.devices import open_devices

    try:
        snaps = [d.snapshot() for d in open_devices(devices, readonly=True) if d.has_memory]
    except Exception as e:  # a device layer that cannot read must not stop the view
        logger.debug("devices unreadable: %s", e)
        return _nvml_devices()
    return [
        DeviceView(s.label, _mib(s.capacity_bytes), _mib(s.used_bytes), s.utilization)
        for s in snaps
    ]


def _nvml_devices() -> list[DeviceView]:
    try:
        import pynvml

        pynvml.nvmlInit()
        views = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            views.append(DeviceView(f"cuda:{index}", mem.total / MIB, mem.used / MIB, util))
        return views
    except Exception as e:  # no driver / library: a CPU machine
        logger.debug("NVML unavailable: %s", e)
        return []


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MIB


def watch(
    ref: StudyRef,
    devices: DeviceSettings | None = None,
    once: bool = False,
    interval_s: float = 2.0,
) -> None:
    """Print one snapshot (``once``) or refresh a live view until Ctrl-C."""
    from rich.console import Console
    from rich.live import Live

    from hpo.look.status_view import render, render_error

    console = Console()
    if not console.is_terminal:  # a pipe or file: no terminal width to fit, so do not wrap at 80
        console = Console(width=160)
    with StudyDB(ref) as db:
        if once:
            console.print(render(take_snapshot(db, read_devices(devices))))
            return
        with Live(console=console, auto_refresh=False, screen=False) as live:
            try:
                while True:
                    live.update(_frame(db, devices, render, render_error), refresh=True)
                    time.sleep(interval_s)
            except KeyboardInterrupt:
                return


def _frame(
    db: StudyDB, devices: DeviceSettings | None, render: Any, render_error: Any
) -> RenderableType:
    try:
        return render(take_snapshot(db, read_devices(devices)))
    except Exception as e:  # e.g. a busy file: show it and try again at the next refresh
        logger.debug("snapshot failed", exc_info=True)
        return render_error(db.ref, e)

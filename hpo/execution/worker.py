"""Worker process entry point: import the objective, then ask trials for the supervisor
(:mod:`hpo.execution.proposer`) and run the trials it assigns.

Workers ignore SIGINT (the supervisor decides how a Ctrl-C ends running trials), exit when
the supervisor's end of the pipe closes, and exit on their own if the supervisor vanishes.
Their storage rides out outages of up to ``storage.outage_s``; past that, or on a permanent
storage error, a worker logs one line and exits with :data:`STORAGE_EXIT`: the supervisor
fails the trial ``worker_died`` (and retries it) if its own storage works, else stops.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from hpo.execution.protocol import Assignment, Fatal, Ready

if TYPE_CHECKING:
    from hpo.config.settings import Settings

logger = logging.getLogger(__name__)

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
STORAGE_EXIT = 75  # EX_TEMPFAIL: the storage failed (or stayed away past storage.outage_s)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; pickled to the spawned process."""

    settings: Settings  # the objective's config travels inside (Settings.objective_cfg)
    threads: int  # CPU threads for numeric libraries in this worker
    run_id: str = ""  # marks every process of this run (hpo.execution.procs.RUN_ENV)


def load_objective(path: str) -> Any:
    """Import ``module:function`` and return the callable."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    try:
        obj = getattr(module, attr)
    except AttributeError as e:
        raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise ImportError(f"{path!r} is not callable")
    return obj


def _objective(settings: Settings) -> Any:
    """The objective: unpickled when the Python API sent it by value, else imported."""
    if settings.by_value.objective is not None:
        from hpo.config.by_value import unpack

        return unpack(settings.by_value.objective)
    return load_objective(settings.study.objective)


def resolve_device(setting: str) -> str:
    """``auto`` → ``cuda:0`` when NVML sees a visible GPU, else ``cpu``; ``sim`` → ``sim:N``."""
    if setting == "cpu":
        return "cpu"
    if setting == "sim":
        return f"sim:{os.environ.get('HPO_SIM_DEVICE', '0')}"
    if setting == "cuda" or _gpu_visible():
        return "cuda:0"
    return "cpu"


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    from hpo.devices import nvidia_count

    return nvidia_count() > 0


def main(conn: Connection, spec: WorkerSpec) -> None:
    """Process target of a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in _THREAD_VARS:
        os.environ.setdefault(var, str(spec.threads))
    logging.basicConfig(
        level=spec.settings.log_level, format="[hpo worker %(process)d] %(message)s"
    )
    _exit_with_parent()
    from hpo.execution.procs import RUN_ENV, become_subreaper

    os.environ[RUN_ENV] = spec.run_id  # inherited by whatever the trials start
    become_subreaper()  # the trial's orphaned grandchildren become ours, and end with the trial
    objective_path = spec.settings.study.objective
    for directory in reversed(spec.settings.import_paths):  # the user's project first
        if directory not in sys.path:
            sys.path.insert(0, directory)
    try:
        objective = _objective(spec.settings)
    except Exception as e:
        _send(conn, Fatal(f"cannot import objective {objective_path!r}: {_describe_import(e)}"))
        return
    _warm_up()
    if not _send(conn, Ready(os.getpid())):
        return  # the supervisor is gone (or killed this worker while it started)
    _serve(conn, spec, objective)


def _send(conn: Connection, message: object) -> bool:
    """Send to the supervisor; False (no traceback) when it is gone."""
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):
        return False
    return True


def _describe_import(e: BaseException) -> str:
    """An import failure with the file and line of the failing statement in the user's code."""
    import traceback

    text = f"{type(e).__name__}: {e}"
    if isinstance(e, SyntaxError) and e.filename:
        return f"{text} ({e.filename}:{e.lineno})"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "importlib" not in f.filename]
    return f"{text} ({frames[-1].filename}:{frames[-1].lineno})" if frames else text


def _warm_up() -> None:
    """Import what the first trial needs now, so its time limit measures the trial alone."""
    import omegaconf  # noqa: F401
    import optuna  # noqa: F401

    import hpo.config.schema  # noqa: F401
    import hpo.execution.runner  # noqa: F401
    import hpo.storage.rdb  # noqa: F401


@dataclass
class _Session:
    """The study as this worker opened it: to ask trials for the supervisor and to run them."""

    study: Any  # optuna.Study
    storage: Any  # its storage (outages ridden out)
    proposer: Any  # hpo.execution.proposer.Proposer


def _serve(conn: Connection, spec: WorkerSpec, objective: Any) -> None:
    from hpo.execution.procs import RssTrend, end_descendants
    from hpo.execution.protocol import Proposal, Propose
    from hpo.storage import StorageOutage

    session: _Session | None = None  # opened when first needed
    runner = None
    trend = RssTrend()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if isinstance(msg, Propose):
            try:
                session = session or _open_session(spec)
                reply = session.proposer.propose(msg)
            except StorageOutage as e:  # the supervisor sees the exit and decides
                logger.error("could not ask for a trial: %s; worker exits", e)
                sys.exit(STORAGE_EXIT)
            except Exception as e:
                reply = Proposal(None, error=f"{type(e).__name__}: {e}")
            if not _send(conn, reply):
                return
            continue
        if not isinstance(msg, Assignment):
            return
        try:
            session = session or _open_session(spec)
            if runner is None:
                runner = _make_runner(spec, objective, msg.device, session, conn)
            outcome = runner.run(msg)
        except StorageOutage as e:  # the supervisor sees the exit: worker_died, or it stops
            logger.error("trial %d: %s; worker exits", msg.trial_number, e)
            end_descendants()
            sys.exit(STORAGE_EXIT)
        strays = end_descendants()  # what the trial started must not outlive it
        if strays:
            logger.info("trial %d left %d process(es) running: ended", msg.trial_number, strays)
        if trend.after_trial(msg.trial_number):
            outcome.leaking = "its RSS grew after each of its last trials"
        if not _send(conn, outcome):
            return
        if outcome.end_reason.poisons_worker:
            return


def _open_session(spec: WorkerSpec) -> _Session:
    """Open the study with this worker's own sampler (reseeded: two workers must not propose
    the same parameters), re-drawing what the supervisor's memory gate would pre-prune."""
    import optuna

    from hpo.execution.proposer import Proposer
    from hpo.memory.sampling import FeasibleSampler, GateSnapshot
    from hpo.storage import StudyStore, open_storage
    from hpo.storage.rdb import WORKER_CONNECTIONS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = spec.settings
    inner = settings.make_sampler()
    inner.reseed_rng()
    gate = GateSnapshot()
    storage = open_storage(
        settings.storage.url,
        settings.storage.busy_timeout_s,
        outage_s=settings.storage.outage_s,
        quiet=True,
        connections=WORKER_CONNECTIONS,
    )
    study = optuna.load_study(
        study_name=settings.study.name,
        storage=storage,
        sampler=FeasibleSampler(inner, gate.fits),
        pruner=settings.make_pruner(),
    )
    store = StudyStore(storage, settings.study.name, settings.storage.url)
    seed = settings.sampler_seed
    sampler_for = None if seed is None else partial(_seeded, settings, seed)
    space = dict(settings.study.space)
    return _Session(study, storage, Proposer(study, store, space, gate, sampler_for))


def _seeded(settings: Settings, seed: int, number: int) -> Any:
    """The sampler of trial ``number`` of a seeded study."""
    return settings.make_sampler(seed=(seed * 1_000_003 + number) % 2**32)


def _make_runner(
    spec: WorkerSpec, objective: Any, placed: str | None, session: _Session, conn: Connection
) -> Any:
    """The runner of this worker, bound to the device admission ``placed`` its first trial on;
    it tells the supervisor through ``conn`` when a running trial settles."""
    from hpo.devices import open_device
    from hpo.execution.runner import TrialRunner

    settings = spec.settings
    label = placed or resolve_device(settings.devices.kind)
    name = bind_cuda(label) if label.startswith("cuda:") else label
    device = open_device(label, settings.devices)
    cfg = settings.objective_config()
    take = session.proposer.take
    storage = session.storage
    return TrialRunner(
        session.study, objective, cfg, name, device, storage, take, partial(_send, conn)
    )


def bind_cuda(label: str) -> str:
    """Make GPU ``label`` (``cuda:N``, numbered as NVML sees them) this process's only visible
    GPU, before CUDA starts; returns the device name torch then uses for it (``cuda:0``)."""
    index = int(label.split(":", 1)[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else None
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[index] if ids and index < len(ids) else str(index)
    return "cuda:0"


def _exit_with_parent() -> None:
    """Exit (with the trial's children) if the supervisor disappears without telling us."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                from hpo.execution.procs import kill_tree

                for child in _children():
                    kill_tree(child)
                os._exit(3)

    threading.Thread(target=watch, name="hpo-parent-watch", daemon=True).start()


def _children() -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process().children()]
    except psutil.Error:
        return []

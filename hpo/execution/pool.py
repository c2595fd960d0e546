"""A fixed number of spawned worker processes, their pipes, their deaths and replacements.

A slot's process is replaced when it dies, when the supervisor kills it (a trial past its time
limit) and when it is recycled (its memory grew across trials, or ``faults.recycle_after``): it is
asked to exit, and the pool reaps it in the background while its successor starts.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from hpo.errors import ConfigError
from hpo.execution.procs import end_strays, kill_process_tree
from hpo.execution.protocol import Assignment, Fatal, Propose, Ready
from hpo.execution.worker import WorkerSpec
from hpo.execution.worker import main as worker_main

logger = logging.getLogger(__name__)

DIED = object()  # event payload: the worker process exited


@dataclass(eq=False)
class WorkerHandle:
    """One worker process as the supervisor sees it."""

    slot: int
    process: BaseProcess
    conn: Connection
    ready: bool = False
    assignment: Assignment | None = None  # the trial it runs, if any
    started_at: float = 0.0  # monotonic time the assignment was sent
    trials_done: int = 0  # trials this process finished (for recycling)
    proposing: bool = False  # asked to ask the study for a trial; its Proposal not yet back
    gate_seen: int = -1  # the version of the memory gate it was last sent

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def idle(self) -> bool:
        return self.ready and self.assignment is None and not self.proposing


class WorkerPool:
    """``size`` worker processes started with the spawn method (safe with CUDA and threads)."""

    def __init__(self, size: int, spec: WorkerSpec) -> None:
        self._ctx = mp.get_context("spawn")
        self._spec = spec
        self.workers: list[WorkerHandle] = []
        self._size = size
        self._retiring: list[tuple[WorkerHandle, float]] = []  # (worker, kill-after monotonic)

    def start(self) -> None:
        self.workers = [self._spawn(slot) for slot in range(self._size)]

    def _spawn(self, slot: int) -> WorkerHandle:
        parent_end, child_end = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main, args=(child_end, self._spec), name=f"hpo-worker-{slot}"
        )
        with main_module_hidden():
            process.start()
        child_end.close()
        return WorkerHandle(slot=slot, process=process, conn=parent_end)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Wait until every worker imported the objective; a failure is the user's to fix."""
        deadline = time.monotonic() + timeout_s
        while not all(w.ready for w in self.workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfigError(f"workers did not start within {timeout_s:.0f} s")
            for worker, payload in self.poll(min(remaining, 1.0)):
                if payload is DIED:
                    code = worker.process.exitcode
                    raise ConfigError(f"worker {worker.slot} exited while starting (code {code})")
                if isinstance(payload, Fatal):
                    raise ConfigError(payload.message)

    def poll(self, timeout_s: float) -> list[tuple[WorkerHandle, Any]]:
        """Messages and deaths of workers, waiting up to ``timeout_s`` for the first one.

        Returns ``(worker, message)`` pairs; a worker that exited yields ``(worker, DIED)``
        after any message it sent before dying. ``Ready`` messages are consumed here.
        """
        self._reap_retiring()
        by_conn = {w.conn: w for w in self.workers}
        by_sentinel = {w.process.sentinel: w for w in self.workers}
        ready = wait([*by_conn, *by_sentinel], timeout=timeout_s)
        events: list[tuple[WorkerHandle, Any]] = []
        dead: list[WorkerHandle] = []
        for obj in ready:
            if obj in by_sentinel:
                dead.append(by_sentinel[obj])
                continue
            worker = by_conn[obj]  # type: ignore[index]
            events.extend((worker, msg) for msg in _drain(worker.conn))
        for worker in dead:
            events.extend((worker, msg) for msg in _drain(worker.conn))
            worker.process.join()
            events.append((worker, DIED))
        out = []
        for worker, payload in events:
            if isinstance(payload, Ready):
                worker.ready = True
            else:
                out.append((worker, payload))
        return out

    def assign(self, worker: WorkerHandle, assignment: Assignment) -> bool:
        """Send a trial to an idle worker; False if the worker is already gone."""
        worker.assignment = assignment
        worker.started_at = time.monotonic()
        try:
            worker.conn.send(assignment)
        except (BrokenPipeError, OSError):
            return False
        return True

    def propose(self, worker: WorkerHandle, request: Propose) -> bool:
        """Ask an idle worker to ask the study for a trial; False if the worker is gone."""
        worker.proposing = True
        try:
            worker.conn.send(request)
        except (BrokenPipeError, OSError):
            return False
        return True

    def grow(self, size: int, spec: WorkerSpec | None = None) -> None:
        """Start workers until there are ``size`` (``par=auto`` set the cap); ``spec`` replaces
        the spec of workers started from now on."""
        self._spec = spec or self._spec
        while len(self.workers) < size:
            slots = {w.slot for w in self.workers}
            self.workers.append(self._spawn(min(set(range(size)) - slots)))
        self._size = max(self._size, size)

    @property
    def retiring(self) -> list[WorkerHandle]:
        """Recycled workers whose processes have not exited yet."""
        return [w for w, _ in self._retiring if w.process.is_alive()]

    def replace(self, worker: WorkerHandle) -> WorkerHandle:
        """Start a new process in a dead worker's slot."""
        self._end_strays(worker)
        worker.conn.close()
        new = self._spawn(worker.slot)
        self.workers[self.workers.index(worker)] = new
        return new

    def kill(self, worker: WorkerHandle) -> None:
        """SIGKILL a worker and everything it started (a trial past its time limit)."""
        kill_process_tree(worker.process)

    def retire(self, worker: WorkerHandle, grace_s: float = 30.0) -> WorkerHandle:
        """Ask an idle worker to exit and start its successor now (worker recycling)."""
        try:
            worker.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._retiring.append((worker, time.monotonic() + grace_s))
        new = self._spawn(worker.slot)
        self.workers[self.workers.index(worker)] = new
        return new

    def _reap_retiring(self, force: bool = False) -> None:
        keep = []
        for worker, kill_after in self._retiring:
            if worker.process.is_alive() and (force or time.monotonic() > kill_after):
                kill_process_tree(worker.process)
            if worker.process.is_alive():
                keep.append((worker, kill_after))
                continue
            worker.process.join()
            worker.conn.close()
        self._retiring = keep

    def remove(self, worker: WorkerHandle) -> None:
        """Forget a dead worker without replacing it."""
        self._end_strays(worker)
        worker.conn.close()
        self.workers.remove(worker)

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop idle workers politely; kill busy or stuck ones (children before parents)."""
        for worker in self.workers:
            if worker.process.is_alive() and worker.assignment is None:
                try:
                    worker.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + grace_s
        for worker in self.workers:
            if worker.assignment is None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            kill_process_tree(worker.process)
            worker.process.join()
            worker.conn.close()
        self.workers = []
        deadline = time.monotonic() + grace_s
        while self._retiring and time.monotonic() < deadline:
            self._reap_retiring()
            time.sleep(0.05)
        self._reap_retiring(force=True)
        end_strays(self._spec.run_id, ())

    def _end_strays(self, dead: WorkerHandle) -> None:
        """End what the dead worker's trial left running (re-parented to the supervisor, a
        subreaper; see :mod:`hpo.execution.procs`)."""
        live = {w.pid for w in (*self.workers, *self.retiring) if w is not dead}
        ended = end_strays(self._spec.run_id, live)
        if ended:
            logger.info("ended %d process(es) worker %d left behind", ended, dead.pid)


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start processes that do not import the caller's ``__main__``.

    A spawned process first re-imports the parent's main module (by its ``__spec__`` name or
    its ``__file__``), so a script without ``if __name__ == "__main__":`` would run again in
    every worker. hpo's workers start from their own entry point and receive the objective by
    value (:mod:`hpo.config.by_value`): with the main module's name and file hidden while the
    process starts, multiprocessing sends no main module to prepare.
    """
    main = sys.modules.get("__main__")
    missing = object()
    saved = {k: getattr(main, k, missing) for k in ("__spec__", "__file__")}
    try:
        if main is not None:
            main.__spec__ = None
            if saved["__file__"] is not missing:
                del main.__file__
        yield
    finally:
        if main is not None:
            for key, value in saved.items():
                if value is not missing:
                    setattr(main, key, value)


def _drain(conn: Connection) -> list[Any]:
    messages = []
    try:
        while conn.poll():
            messages.append(conn.recv())
    except (EOFError, OSError):
        pass
    return messages

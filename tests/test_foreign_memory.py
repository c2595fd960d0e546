"""Memory held on a card by processes outside hpo comes off the budget admission plans with."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpo.devices import GIB, SimulatedGpu
from hpo.devices.nvidia import NvidiaDevice
from hpo.devices.simulated import SimulatedGpuSpec
from hpo.scheduling.admission import DeviceBooks, own_pids
from tests.conftest import _env, run_hpo

from .test_memory_gate import _trials

HOLDER = """
import os, sys, time
from pathlib import Path
from hpo.devices import GIB
from hpo.devices.simulated import SimulatedGpu, SimulatedGpuSpec
card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), sys.argv[1])
card.allocate(int(float(sys.argv[2]) * GIB))
release = Path(sys.argv[3])
Path(str(release) + ".ready").write_text(str(os.getpid()))
while not release.exists():
    time.sleep(0.05)
"""


@contextlib.contextmanager
def hold(state_dir: Path, gib: float) -> Iterator[int]:
    """Another user's process holding ``gib`` (and its context) on simulated card 0: started
    through a shell that exits at once, so it is no descendant of this process."""
    release = state_dir.parent / f"release-{uuid.uuid4().hex[:6]}"
    ready = Path(f"{release}.ready")
    args = [sys.executable, "-c", HOLDER, str(state_dir), str(gib), str(release)]
    subprocess.run(["sh", "-c", " ".join(shlex.quote(a) for a in args) + " &"], env=_env())
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text():
        assert time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    pid = int(ready.read_text())
    try:
        yield pid
    finally:
        release.write_text("")
        while _alive(pid) and time.monotonic() < deadline + 60:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_simulated_card_tells_foreign_from_own(tmp_path: Path) -> None:
    state = tmp_path / "sim"
    with hold(state, 6.0) as holder:
        card = SimulatedGpu(0, SimulatedGpuSpec(24.0, 0.5), state)
        card.allocate(2 * GIB)  # ours: this process
        assert card.foreign_bytes({holder}) == int(2.5 * GIB)  # this process, seen by another
        assert holder not in own_pids() and os.getpid() in own_pids()
        assert card.foreign_bytes(own_pids()) == int(6.5 * GIB)
        books = DeviceBooks([card], 0.05, int(0.5 * GIB))
        books.measure_foreign()
        assert books.foreign == {0: int(6.5 * GIB)}
        assert books.budget(0) == int(24 * GIB * 0.95) - int(6.5 * GIB)
    books.measure_foreign(every_s=0)
    assert books.budget(0) == int(24 * GIB * 0.95)  # the holder exited: its memory is free


@pytest.mark.parametrize("overcommit", [False, True])
def test_a_study_beside_another_users_memory_never_over_commits_the_card(
    tmp_path: Path, overcommit: bool
) -> None:
    """12 GiB of the 24 GiB card are held by a process outside hpo; memory-aware trials
    packed onto the rest never find the card full (an OOM, if any, is a trial's own cap).
    Under safe overcommit a trial that needs more than a lone trial may hold beside the
    foreign memory is an OOM, retried smaller; it once was a cap hit, re-queued to hit the
    same lone cap again and again, and the study never ended."""
    store = tmp_path / "_optuna"
    with hold(store / "simulated" / "sim", 12.0):
        proc = run_hpo(
            tmp_path,
            "study=simulated",
            f"storage.dir={store}",
            "study.time_scale=0.004",
            "study.n_trials=24",
            "par=4",
            "sampler=random",
            "sampler.seed=3",
            f"memory.overcommit={str(overcommit).lower()}",
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "sim:0: 12800 MiB held outside hpo" in out
    trials = _trials(store / "simulated.db")
    assert all("per-process limit" in t["error"] for t in trials if t["end_reason"] == "oom")
    finished = [t for t in trials if t["end_reason"] in ("complete", "pruned")]
    assert len(finished) == 24
    assert sum(t["end_reason"] == "cap_exceeded" for t in trials) <= len(trials) // 2


class _Nvml:
    """NVML's process lists for one GPU, as pynvml returns them."""

    def __init__(self, procs: list[tuple[int, int | None]], fail: bool = False) -> None:
        self._procs = [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in procs]
        self._fail = fail

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        if self._fail:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self._procs

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:  # noqa: N802
        return self._procs[:1]  # a process may be listed as both


def _nvidia(nvml: _Nvml) -> NvidiaDevice:
    device = NvidiaDevice.__new__(NvidiaDevice)  # no driver here: only the NVML handle
    device._nvml, device._handle = nvml, None  # type: ignore[attr-defined]
    return device


def test_nvidia_counts_local_processes_that_are_not_hpos(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        mine, gone = 999_999_991, 999_999_992  # PIDs this namespace does not have
        nvml = _Nvml([(other.pid, 3 * GIB), (mine, 5 * GIB), (gone, 7 * GIB), (1, None)])
        device = _nvidia(nvml)
        # the other local process counts (once, though listed twice); a PID of another
        # namespace cannot be told apart from ours and does not; unknown memory counts 0
        assert device.foreign_bytes({mine}) == 3 * GIB
        assert device.foreign_bytes({other.pid}) == 0
        assert _nvidia(_Nvml([], fail=True)).foreign_bytes(set()) is None
    finally:
        other.communicate(timeout=30)


def test_only_a_change_worth_a_line_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "sim"
    with hold(state, 4.0):
        books = DeviceBooks([SimulatedGpu(0, SimulatedGpuSpec(), state)], 0.05, 0)
        with caplog.at_level("INFO", logger="hpo.scheduling.admission"):
            books.measure_foreign()
            books.measure_foreign(every_s=0)  # the same again: no line
        assert [r.getMessage() for r in caplog.records] == ["sim:0: 4608 MiB held outside hpo"]

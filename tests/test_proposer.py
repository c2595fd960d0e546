"""Workers ask the study for trials on the supervisor's behalf (hpo.execution.proposer)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.config.settings import Settings
from hpo.contract import Decision
from hpo.execution.protocol import Propose
from hpo.execution.worker import WorkerSpec, _open_session
from hpo.memory import build_gate
from hpo.memory.sampling import GateSnapshot
from hpo.storage import prepare_storage
from tests.conftest import settings_of

OWNER = {"node_id": "here", "supervisor_pid": 1}


def _settings(tmp_path: Path, *extra: str) -> Settings:
    return settings_of(
        "study=toy",
        f"storage.dir={tmp_path / '_optuna'}",
        "sampler=random",
        "log_level=WARNING",
        *extra,
    )


def _worker(settings: Settings) -> Any:
    """A worker's session on the study (created first, as the supervisor does)."""
    prepare_storage(settings.storage.url)
    optuna.create_study(
        study_name=settings.study.name, storage=settings.storage.url, load_if_exists=True
    )
    return _open_session(WorkerSpec(settings, threads=1))


def test_a_proposal_is_a_sampled_running_trial_owned_by_the_supervisor(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "study.n_trials=2")
    worker = _worker(settings)
    proposal = worker.proposer.propose(Propose(2, OWNER))
    assert proposal.trial is not None and proposal.error is None
    stored = worker.study.trials[proposal.trial.number]
    assert stored.state is optuna.trial.TrialState.RUNNING
    assert stored.params == proposal.trial.params
    assert set(stored.params) == set(settings.study.space)
    assert stored.user_attrs == {**OWNER, "worker_pid": os.getpid()}  # the asking process
    assert proposal.trial.user_attrs == {}, "what it had when asked (a retry's attributes)"
    # The worker that asked it runs it without reading it again.
    assert worker.proposer.take(proposal.trial_id).params == stored.params


def test_no_proposal_once_every_slot_is_claimed_but_a_waiting_retry_is_taken(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, "study.n_trials=2")
    worker = _worker(settings)
    asked = [worker.proposer.propose(Propose(2, OWNER)) for _ in range(3)]
    assert [p.trial is not None for p in asked] == [True, True, False]
    retry = {"x": 0.5, "family": "a", "width": 3}
    worker.study.enqueue_trial(retry, user_attrs={"attempt": 1})
    again = worker.proposer.propose(Propose(2, OWNER))
    assert again.trial is not None and again.trial.params == retry
    assert again.trial.user_attrs["attempt"] == 1


def test_a_seeded_study_proposes_by_trial_number_whichever_worker_asks(tmp_path: Path) -> None:
    """Two workers asking in turn give each trial number the parameters one worker would."""
    alone = _worker(_settings(tmp_path / "a", "sampler.seed=7"))
    one = [alone.proposer.propose(Propose(6, OWNER)).trial.params for _ in range(6)]
    first, second = (_worker(_settings(tmp_path / "b", "sampler.seed=7")) for _ in range(2))
    two = [
        (first if i % 2 else second).proposer.propose(Propose(6, OWNER)).trial.params
        for i in range(6)
    ]
    assert one == two
    unseeded = _worker(_settings(tmp_path / "c"))
    assert [unseeded.proposer.propose(Propose(6, OWNER)).trial.params for _ in range(6)] != one


def test_a_workers_sampler_consults_the_gate_the_supervisor_sent(tmp_path: Path) -> None:
    """The gate travels pickled; the worker's snapshot decides as the supervisor's gate."""
    settings = settings_of(
        "study=simulated", f"storage.dir={tmp_path}", "sampler=random", "log_level=WARNING"
    )
    from hpo.devices import open_devices

    gate = build_gate(settings, open_devices(settings.devices))
    assert gate.active
    snapshot = GateSnapshot()
    huge = {"model": "large", "batch_size": 10**6, "lr": 1e-3}
    assert snapshot.fits(huge), "no gate yet: every proposal passes"
    gate.observe(
        {"model": "large", "batch_size": 8, "lr": 1e-3},
        {"end_reason": "complete", "peak_vram_mib": 4000.0},
    )
    gate.observe(
        {"model": "large", "batch_size": 16, "lr": 1e-3},
        {"end_reason": "complete", "peak_vram_mib": 8000.0},
    )
    assert gate.check(huge).decision is Decision.PRE_PRUNE
    snapshot.update(pickle.dumps(gate))
    assert not snapshot.fits(huge)
    assert snapshot.fits({"model": "large", "batch_size": 8, "lr": 1e-3})
    snapshot.update(b"not a pickle")  # logged; the last good gate stays
    assert not snapshot.fits(huge)


@pytest.mark.parametrize("par", [2])
def test_tune_finishes_exactly_n_trials_with_workers_asking(tmp_path: Path, par: int) -> None:
    from hpo.supervisor import Supervisor

    settings = _settings(tmp_path, "study.n_trials=9", "study.epoch_s=0", f"par={par}")
    summary = Supervisor(settings, poll_s=0.05).run()
    assert summary.finished == 9
    study = optuna.load_study(study_name="toy", storage=settings.storage.url)
    states = [t.state for t in study.trials]
    assert len(states) == 9 and all(s.is_finished() for s in states)
    assert all(t.user_attrs["end_reason"] in ("complete", "pruned") for t in study.trials)

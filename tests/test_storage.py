"""hpo.storage.rdb: the study's storage, and one-transaction user attributes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, InMemoryStorage

from hpo.storage import StudyStore, open_storage, prepare_storage


def _sqlite(tmp_path: Path) -> BaseStorage:
    url = f"sqlite:///{tmp_path / 'attrs.db'}"
    prepare_storage(url)
    return open_storage(url, busy_timeout_s=10)


def _postgres(_: Path) -> BaseStorage:
    url = os.environ.get("HPO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("HPO_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("HPO_TEST_POSTGRES_URL not set")
    return open_storage(url, busy_timeout_s=10)


def _set(storage: Any, study: optuna.Study, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    store = StudyStore(storage, study.study_name)
    store.set_user_attrs(store.trial_id(trial.number), attrs)


class CountingStorage:
    """Wraps a storage and counts commits of user attributes (one per call it forwards)."""

    def __init__(self, inner: BaseStorage) -> None:
        self._backend = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:  # reads go to the storage it wraps
        return getattr(self._backend, name)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.calls += 1
        self._backend.set_trial_user_attr(trial_id, key, value)


@pytest.mark.parametrize("make", [_sqlite, _postgres], ids=["sqlite", "postgres"])
def test_set_user_attrs_writes_all_and_overwrites(tmp_path: Path, make: Any) -> None:
    storage = make(tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    _set(study._storage, study, trial, {"a": 1, "b": "x", "c": [1.5, None]})
    _set(study._storage, study, trial, {"a": 2, "d": {"k": True}})
    got = study._storage.get_trial(trial._trial_id).user_attrs
    assert got == {"a": 2, "b": "x", "c": [1.5, None], "d": {"k": True}}


@pytest.mark.parametrize("make", [_sqlite, _postgres], ids=["sqlite", "postgres"])
def test_set_user_attrs_on_a_finished_trial_writes_nothing(tmp_path: Path, make: Any) -> None:
    storage = make(tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        _set(study._storage, study, trial, {"late": 1, "later": 2})
    assert study._storage.get_trial(trial._trial_id).user_attrs == {}


def test_rdb_storage_takes_one_transaction_not_one_call_per_attribute(tmp_path: Path) -> None:
    rdb = _sqlite(tmp_path)
    study = optuna.create_study(storage=rdb, study_name="one-commit")
    trial = study.ask()
    counting = CountingStorage(rdb)
    _set(counting, study, trial, {f"k{i}": i for i in range(6)})
    assert counting.calls == 0, "Optuna's RDB storage should be written in one transaction"
    assert len(rdb.get_trial(trial._trial_id).user_attrs) == 6


@pytest.mark.parametrize("make", [_sqlite, _postgres], ids=["sqlite", "postgres"])
def test_user_attrs_take_the_same_few_statements_however_many(tmp_path: Path, make: Any) -> None:
    """The supervisor writes a dozen attributes per trial: one trial read and one upsert, not
    a read and a write per attribute."""
    from sqlalchemy import event

    from hpo.storage._private import unwrap

    storage = make(tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"attrs-{uuid.uuid4().hex[:8]}")
    trial = study.ask()
    _set(study._storage, study, trial, {"k0": 0})  # the trial id is cached from here on
    engine = unwrap(storage).engine  # type: ignore[attr-defined]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        _set(study._storage, study, trial, {f"k{i}": i for i in range(12)})
        few = len(statements)
        _set(study._storage, study, trial, {"one": 1})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert few <= 3, statements
    assert len(statements) - few == few
    assert study._storage.get_trial(trial._trial_id).user_attrs == {
        **{f"k{i}": i for i in range(12)},
        "one": 1,
    }


def test_other_storages_get_one_call_per_attribute() -> None:
    memory = InMemoryStorage()
    study = optuna.create_study(storage=memory)
    trial = study.ask()
    counting = CountingStorage(memory)
    _set(counting, study, trial, {"a": 1, "b": 2})
    assert counting.calls == 2
    assert memory.get_trial(trial._trial_id).user_attrs == {"a": 1, "b": 2}


@pytest.mark.parametrize("make", [_sqlite, _postgres], ids=["sqlite", "postgres"])
def test_counts_come_from_the_database_not_from_every_trial(
    tmp_path: Path, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting (the slot claim, the finished count) is one query: it agrees with Optuna's
    ``get_n_trials`` and never builds the study's trials, whose number grows to thousands."""
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    storage = make(tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"count-{uuid.uuid4().hex[:8]}")
    for value in (1.0, 2.0):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # RUNNING
    study.enqueue_trial({})  # WAITING
    store = StudyStore(storage, study.study_name)
    cases = [
        (TrialState.COMPLETE, TrialState.PRUNED),
        (TrialState.RUNNING, TrialState.WAITING),
        (TrialState.FAIL,),
        tuple(TrialState),
    ]
    expected = [storage.get_n_trials(store.study_id, states) for states in cases]
    assert expected == [3, 2, 1, 6]

    def no_full_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a count read every trial of the study")

    monkeypatch.setattr(RDBStorage, "_get_trials", no_full_read)
    assert [store.count(states) for states in cases] == expected
    assert store.n_finished() == 3
    assert store.claim.free(6) is True  # a WAITING trial may be taken

"""One study in its storage, as the supervisor writes it: ids, attributes, heartbeats, counts.

:class:`StudyStore` holds the storage the supervisor opened and the study's id, and offers the
few operations the supervisor needs beyond ``optuna.Study``. Ids come from Optuna's public
storage API (``get_study_id_from_name``, ``get_trial_id_from_study_id_trial_number``); what has
no public form lives in :mod:`hpo.storage._private`. With a
:class:`~hpo.storage.resilient.ResilientStorage` (what :func:`~hpo.storage.open_storage` returns)
the private queries ride out storage outages like the public calls do.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from optuna.trial import TrialState

from hpo.contract import FINISHED
from hpo.storage import _private
from hpo.storage.resilient import ResilientStorage

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

T = TypeVar("T")


def _direct(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def trial_id_of(trial: Any) -> int:
    """The storage id of an ``optuna.Trial``."""
    return _private.trial_id_of(trial)


def user_attrs_writer(storage: BaseStorage) -> Callable[[int, Mapping[str, Any]], None]:
    """``write(trial_id, attrs)``: the user attributes of one trial in one transaction.

    Optuna's RDB storage commits every attribute on its own, and a trial collects a dozen
    (owner, estimates, placement, outcome): one commit for all keeps the time per trial down.
    Without the private writer, one call per attribute. Raises UpdateFinishedTrialError,
    writing nothing, if the trial has finished.
    """
    write = _private.batch_writer(storage)
    if write is None:

        def one_by_one(trial_id: int, attrs: Mapping[str, Any]) -> None:
            for key, value in attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)

        return one_by_one
    if isinstance(storage, ResilientStorage):
        batch, guarded = write, storage

        def resilient(trial_id: int, attrs: Mapping[str, Any]) -> None:
            guarded.call(batch, trial_id, attrs)

        return resilient
    return write


class StudyStore:
    """The storage of study ``name`` (it must exist), with trial ids cached by number."""

    def __init__(self, storage: RDBStorage, name: str, url: str = "") -> None:
        from hpo.storage.claim import SlotClaim

        self.storage = storage
        self.name = name
        self.url = url
        self.study_id = storage.get_study_id_from_name(name)
        self._ids: dict[int, int] = {}
        self._write = user_attrs_writer(storage)
        self._call = storage.call if isinstance(storage, ResilientStorage) else _direct
        self.claim = SlotClaim(storage, url, self.study_id, self.count)

    def trial_id(self, number: int) -> int:
        """The storage id of trial ``number`` (one query the first time)."""
        tid = self._ids.get(number)
        if tid is None:
            tid = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
            self._ids[number] = tid
        return tid

    def forget(self, number: int) -> None:
        """Drop a cached id (the trial ended)."""
        self._ids.pop(number, None)

    def set_user_attrs(self, trial_id: int, attrs: Mapping[str, Any]) -> None:
        """Write ``attrs`` as user attributes of one trial in one transaction (see
        :func:`user_attrs_writer`)."""
        self._write(trial_id, attrs)

    def n_finished(self) -> int:
        """COMPLETE + PRUNED trials of the study, every supervisor's."""
        return self.count(FINISHED)

    def count(self, states: Collection[TrialState]) -> int:
        """Trials of the study in ``states``, counted by the database (one query, whatever
        the size of the study)."""
        return self._call(_private.count_trials, self.storage, self.study_id, states)

    def running(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(
            self.study_id, deepcopy=False, states=(TrialState.RUNNING,)
        )

    def set_study_attr(self, key: str, value: Any) -> None:
        """A study system attribute (the control plane: nodes, stop requests)."""
        self.storage.set_study_system_attr(self.study_id, key, value)

    def study_attrs(self) -> dict[str, Any]:
        return dict(self.storage.get_study_system_attrs(self.study_id))

    def record_heartbeat(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)

    def stale_trial_ids(self) -> set[int]:
        return _private.stale_trial_ids(self.storage, self.study_id)

    def has_heartbeat(self, trial_id: int) -> bool:
        return self._call(_private.has_heartbeat, self.storage, trial_id)

    def fail(self, trial_id: int) -> None:
        """Set a RUNNING trial FAIL (UpdateFinishedTrialError if it already ended)."""
        self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

    def trial(self, trial_id: int) -> FrozenTrial:
        return self.storage.get_trial(trial_id)

    def ids_of(self, trials: Collection[FrozenTrial]) -> dict[int, int]:
        """``{trial_id: number}`` of ``trials``."""
        return {self.trial_id(t.number): t.number for t in trials}

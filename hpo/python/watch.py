"""The caller's side of a run of ``hpo.optimize``: a thread beside the supervisor that reads
the study's storage as trials finish, and does what Optuna's optimize loop does in the
caller's process: call the callbacks, stop at ``timeout``, raise what ``catch`` does not
name, show the progress. It stops the run the way ``hpo stop --drain`` does (running trials
finish, no new one starts), through the supervisor's stop signals.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from hpo.contract import Attr
from hpo.errors import TrialFailed
from hpo.storage import _private

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo.supervisor.signals import StopSignals

logger = logging.getLogger(__name__)

Callback = Callable[["optuna.Study", "FrozenTrial"], None]
Progress = Callable[[int, "int | None", "float | None"], None]  # (done, target, best value)
_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class RunWatcher:
    """Watches the trials of ``study`` (a study over the run's storage) that end after
    ``skip`` (numbers of trials that had ended before the run)."""

    def __init__(
        self,
        study: optuna.Study,
        signals: StopSignals,
        *,
        timeout: float | None = None,
        callbacks: Sequence[Callback] = (),
        catch: Iterable[type[BaseException]] = (),
        target: int | None = None,
        progress: Progress | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self._study, self._signals = study, signals
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._callbacks, self._catch = list(callbacks), tuple(catch)
        self._target, self._progress, self._poll_s = target, progress, poll_s
        self._seen = {t.number for t in study.get_trials(deepcopy=False, states=_ENDED)}
        self._done = 0
        self.timed_out = False
        self.error: BaseException | None = None  # raised by the caller once the run ended
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-run-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop watching; one last look, so the trials that ended last are seen too."""
        self._halt.set()
        self._thread.join()
        _private.enter_optimize_loop(self._study)
        self.poll()

    def _run(self) -> None:
        _private.enter_optimize_loop(self._study)  # study.stop() from a callback works
        while not self._halt.wait(self._poll_s):
            try:
                self.poll()
            except Exception as e:  # the storage went away: the supervisor says why
                logger.debug("run watcher: %s", e)

    def poll(self) -> None:
        """Look at the trials that ended since the last look; stop the run if asked to."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            if not self.timed_out:
                logger.info("timeout reached: running trials finish, no new one starts")
            self.timed_out = True
            self._stop()
        ended = [
            t
            for t in self._study.get_trials(deepcopy=False, states=_ENDED)
            if t.number not in self._seen
        ]
        for trial in sorted(ended, key=lambda t: t.number):
            self._seen.add(trial.number)
            self._done += trial.state is not TrialState.FAIL
            self._on_ended(trial)
        if ended and self._progress is not None:
            self._progress(self._done, self._target, _best_value(self._study))

    def _on_ended(self, trial: FrozenTrial) -> None:
        if self.error is None and trial.state is TrialState.FAIL and not self._caught(trial):
            error = str(trial.user_attrs.get(Attr.ERROR, "")).strip().splitlines()
            last = error[-1] if error else "no error recorded"
            self.error = TrialFailed(f"trial {trial.number} failed: {last}")
            self._stop()
        for callback in self._callbacks:
            try:
                callback(self._study, trial)
            except Exception as e:
                if self.error is None:
                    self.error = e
                self._stop()
        if _private.stop_requested(self._study):
            self._stop()

    def _caught(self, trial: FrozenTrial) -> bool:
        """Whether a failed trial is one ``catch`` lets pass: an infrastructure failure (OOM,
        a dead worker, a timeout: hpo's to handle), or an exception of a type it names."""
        if trial.user_attrs.get(Attr.END_REASON) != "error":
            return True
        error = str(trial.user_attrs.get(Attr.ERROR, "")).strip().splitlines()
        name = error[-1].split(":", 1)[0].strip().rpartition(".")[2] if error else ""
        raised = getattr(builtins, name, None)
        for kind in self._catch:
            if kind.__name__ == name or kind in (Exception, BaseException):
                return True
            if isinstance(raised, type) and issubclass(raised, kind):
                return True
        return False

    def _stop(self) -> None:
        self._signals.request("drain")


def _best_value(study: optuna.Study) -> float | None:
    if len(study.directions) > 1:
        return None
    try:
        return float(study.best_value)
    except ValueError:  # no trial completed yet
        return None


def sequence(value: Any) -> tuple[Any, ...]:
    """``catch``/``callbacks`` as Optuna takes them: one item, an iterable, or None."""
    if value is None:
        return ()
    if isinstance(value, type) or callable(value) and not isinstance(value, Iterable):
        return (value,)
    return tuple(value)

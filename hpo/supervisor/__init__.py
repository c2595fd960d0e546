"""The supervisor: one per node and study. :class:`Supervisor` opens the study and hands it to
a :class:`~hpo.supervisor.run.Run`, whose loop starts trials through a composed
:class:`~hpo.supervisor.launcher.Launcher` (intake: ask → gate → backlog; dispatch: admission →
start), handles worker events from one table (:mod:`.events`), ends trials through a
:class:`~hpo.supervisor.recorder.TrialRecorder` (tell unless the worker did, retries,
checkpoints), and keeps them alive (:mod:`.liveness`: heartbeats, reaping). docs/architecture.md
follows a trial through these modules."""

from hpo.supervisor.recorder import RunSummary
from hpo.supervisor.signals import describe_exit
from hpo.supervisor.supervisor import Supervisor

__all__ = ["RunSummary", "Supervisor", "describe_exit"]

"""The supervisor: one per node and study. Its event loop (:mod:`.supervisor`) starts trials
through a composed :class:`~hpo.supervisor.launcher.Launcher` (a worker's proposal → gate →
backlog → admission → dispatch), ends them through a
:class:`~hpo.supervisor.recorder.TrialRecorder` (tell unless the worker did, retries,
checkpoints), and keeps them alive (:mod:`.liveness`: heartbeats, reaping)."""

from hpo.supervisor.recorder import RunSummary
from hpo.supervisor.signals import describe_exit
from hpo.supervisor.supervisor import Supervisor

__all__ = ["RunSummary", "Supervisor", "describe_exit"]

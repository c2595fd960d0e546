"""Which asked trial starts where and when: admission onto devices by predicted memory, the
backlog of waiting trials (largest first, backfill without starvation), host RAM, learned
durations, and the worker cap of ``par=auto``."""

from hpo.scheduling.admission import AdmissionScheduler, DeviceBooks, Placement, Protection, Slot
from hpo.scheduling.autopar import auto_par
from hpo.scheduling.backlog import Backlog, Waiting, place_next
from hpo.scheduling.durations import DurationModel
from hpo.scheduling.ram import RamBudget

__all__ = [
    "AdmissionScheduler",
    "Backlog",
    "DeviceBooks",
    "DurationModel",
    "Placement",
    "Protection",
    "RamBudget",
    "Slot",
    "Waiting",
    "auto_par",
    "place_next",
]

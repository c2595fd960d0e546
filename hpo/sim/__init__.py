"""Simulated workloads: a device and ground truth from a spec file, and their objective."""

from hpo.sim.workload import Workload, load_workload

__all__ = ["Workload", "load_workload"]

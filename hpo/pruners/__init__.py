"""Pruners of hpo."""

from hpo.pruners._patient_hyperband import PatientHyperbandPruner

__all__ = ["PatientHyperbandPruner"]

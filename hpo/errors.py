"""Exceptions of the hpo package: one root, user mistakes apart from failures."""

from __future__ import annotations


class HpoError(Exception):
    """Root of every exception raised by hpo."""


class ConfigError(HpoError):
    """A user mistake in the configuration or command line (the CLI exits with code 2)."""


class StudyAborted(HpoError):
    """The supervisor stopped a study because it cannot make progress."""


class TrialFailed(HpoError):
    """``hpo.optimize``: a trial's objective raised an exception its ``catch`` does not name
    (as ``study.optimize`` re-raises it); the message is the trial's and its error's."""

"""The ``hpo`` command line: ``hpo tune`` and the look commands (stats, status, dashboard,
report); user mistakes end as one line on stderr and exit code 2."""

from hpo.cli.main import main

__all__ = ["main"]

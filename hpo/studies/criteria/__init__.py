"""The built-in ``criteria`` study: a transformer text classifier on generated data.

This package's ``__init__`` and ``config`` stay free of torch (the supervisor imports the
config schema); the objective lives in :mod:`hpo.studies.criteria.objective`.
"""

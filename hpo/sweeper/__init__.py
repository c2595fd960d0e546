"""The Hydra door: ``hydra/sweeper=hpo`` runs a ``--multirun`` of any ``@hydra.main`` app as an
hpo study (the plugin class lives in ``hydra_plugins/hpo_sweeper``; this package does the work).

The sweep's ``params`` (Hydra's override grammar) become the study's declared search space
(:mod:`hpo.sweeper.params`); each trial runs in one of hpo's workers as a Hydra job of the app
(:mod:`hpo.sweeper.job`); :mod:`hpo.sweeper.sweep` builds the settings, runs the supervisor and
writes ``optimization_results.yaml``.
"""

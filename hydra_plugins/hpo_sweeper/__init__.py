"""hpo's Hydra sweeper: ``hydra/sweeper=hpo`` (the work is done by :mod:`hpo.sweeper`)."""

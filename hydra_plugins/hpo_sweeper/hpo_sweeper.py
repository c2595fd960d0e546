"""The ``hpo`` sweeper Hydra discovers: a thin plugin class over :mod:`hpo.sweeper.sweep`."""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class HpoSweeper(Sweeper):
    """Runs a multirun as an hpo study: asynchronous workers, memory-aware admission,
    pruning, crash isolation (docs/hydra.md)."""

    def __init__(self, **keys: Any) -> None:
        self.keys = {k: _plain(v) for k, v in keys.items()}
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    def sweep(self, arguments: list[str]) -> None:
        from hpo.errors import ConfigError
        from hpo.sweeper.sweep import Sweep, SweepConf

        assert self.config is not None and self.task_function is not None
        try:
            sweep = Sweep.build(
                SweepConf(**self.keys),
                self.hydra_context,
                self.task_function,
                self.config,
                arguments,
            )
            sweep.run(self.config)
        except ConfigError as e:  # a mistake in the sweep's keys: one line, exit code 2
            print(f"hpo: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def _plain(value: Any) -> Any:
    """A key's value as plain Python (Hydra passes DictConfig and ListConfig)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value

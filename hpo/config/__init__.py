"""Configuration: the schema of every config group, Hydra composition with validation, and the
typed :class:`Settings` the supervisor, scheduler, gate and devices receive.
"""

from hpo.config.compose import compose, find_config_dir
from hpo.config.schema import HpoConf, StudyConf
from hpo.config.settings import Settings
from hpo.config.validate import instantiate_pruner, instantiate_sampler

__all__ = [
    "HpoConf",
    "Settings",
    "StudyConf",
    "compose",
    "find_config_dir",
    "instantiate_pruner",
    "instantiate_sampler",
]

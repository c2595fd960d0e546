"""Composing the Hydra config tree: find ``conf/``, apply overrides, validate.

Every mistake in the tree or the overrides becomes a :class:`~hpo.errors.ConfigError` with one
line that names what is wrong (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from hpo.config.schema import ParamConf, register_schemas
from hpo.config.validate import first_line, validate
from hpo.errors import ConfigError


def register_configs() -> None:
    """Register hpo's schemas and those of the built-in studies with Hydra's ConfigStore."""
    from hpo.studies import register_schemas as register_study_schemas

    register_schemas()
    register_study_schemas()


def find_config_dir(explicit: str | None = None) -> Path:
    """Locate the ``conf/`` tree: explicit path, $HPO_CONFIG_DIR, ./conf, or the source tree."""
    if explicit:
        if not (Path(explicit) / "config.yaml").is_file():
            raise ConfigError(f"--config-dir {explicit!r} holds no config.yaml")
        return Path(explicit).resolve()
    candidates = [os.environ.get("HPO_CONFIG_DIR"), "conf"]
    candidates.append(str(Path(__file__).resolve().parents[2] / "conf"))
    for cand in candidates:
        if cand and (Path(cand) / "config.yaml").is_file():
            return Path(cand).resolve()
    raise ConfigError("no conf/config.yaml found: run from the project root or pass --config-dir")


def compose(overrides: list[str], config_dir: str | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides and validate the result."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = find_config_dir(config_dir)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_describe_compose_error(e)) from e
    finally:
        GlobalHydra.instance().clear()
    _fill_from_workload(cfg, directory)
    validate(cfg)
    return cfg


def _fill_from_workload(cfg: DictConfig, config_dir: Path) -> None:
    """A simulated study: resolve its workload file and take the search space from it."""
    workload = cfg.study.get("workload")
    if not workload:
        return
    from hpo.sim.workload import load_workload

    path = Path(workload)
    if not path.is_absolute() and not path.exists():
        path = config_dir.parent / path  # relative to the project, like the conf/ tree
    cfg.study.workload = str(path.resolve())
    if not cfg.study.space:
        from omegaconf.errors import OmegaConfBaseException

        space = load_workload(cfg.study.workload).space
        try:
            with open_dict(cfg.study):
                cfg.study.space = {
                    name: OmegaConf.merge(OmegaConf.structured(ParamConf), dist)
                    for name, dist in space.items()
                }
        except OmegaConfBaseException as e:
            raise ConfigError(f"workload {workload!r}: space: {first_line(e)}") from e


def _describe_compose_error(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error: what failed and why."""
    from hydra.errors import MissingConfigException

    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options is not None:
        group, _, option = e.missing_cfg_file.rpartition("/")
        options = [o for o in e.options if not o.startswith("base_")]
        return f"unknown {group or 'config'} {option!r} (options: {', '.join(options)})"
    text = first_line(e)
    if e.__cause__ is not None:
        text = f"{text.rstrip('.')}: {first_line(e.__cause__)}"
    return text

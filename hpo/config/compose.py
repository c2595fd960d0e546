"""Composing the Hydra config tree: find ``conf/``, apply overrides, validate.

Every mistake in the tree or the overrides becomes a :class:`~hpo.errors.ConfigError` with one
line that names what is wrong (the CLI prints it and exits with code 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpo.config.schema import ParamConf, register_schemas
from hpo.config.validate import first_line, validate
from hpo.errors import ConfigError


def register_configs() -> None:
    """Register hpo's schemas and those of the built-in studies with Hydra's ConfigStore."""
    from hpo.studies import register_schemas as register_study_schemas

    register_schemas()
    register_study_schemas()


BUILTIN_CONF = Path(__file__).resolve().parents[1] / "conf"  # hpo's own groups (package data)


@dataclass(frozen=True)
class ConfigSources:
    """Where a run's config comes from: hpo's built-in groups, the user's own ``conf/``
    layered over them, and the project directory (the database and the objective live there)."""

    builtin: Path
    user: Path | None
    project: Path

    @property
    def primary(self) -> Path:
        """Hydra's primary directory: the user's when it has its own config.yaml."""
        if self.user is not None and (self.user / "config.yaml").is_file():
            return self.user
        return self.builtin

    @property
    def search_path(self) -> list[Path]:
        """The other directories Hydra searches for group options."""
        return [d for d in (self.user, self.builtin) if d is not None and d != self.primary]


def builtin_conf_dir() -> Path:
    """hpo's own config tree, shipped inside the package."""
    return BUILTIN_CONF


def find_config_dir(explicit: str | None = None) -> ConfigSources:
    """The user's ``conf/``: ``--config-dir``, else ``$HPO_CONFIG_DIR``, else ``./conf`` when it
    exists; it is layered over hpo's built-in groups. Without one, the built-ins alone and the
    current directory as the project."""
    builtin = builtin_conf_dir().resolve()
    chosen = explicit or os.environ.get("HPO_CONFIG_DIR")
    where = "--config-dir" if explicit else "HPO_CONFIG_DIR"
    if chosen:
        path = Path(chosen).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{where} {chosen!r} is not a directory")
        user: Path | None = path.resolve()
    else:
        user = Path("conf").resolve() if Path("conf").is_dir() else None
    if user == builtin:
        return ConfigSources(builtin, None, Path.cwd().resolve())
    project = user.parent if user is not None else Path.cwd().resolve()
    return ConfigSources(builtin, user, project)


def compose(
    overrides: list[str],
    config_dir: str | None = None,
    values: Mapping[str, Any] | None = None,
    check: bool = True,
) -> DictConfig:
    """Compose the config with Hydra overrides and validate the result (unless not ``check``).

    ``values`` (the Python API) are merged over the composed config, overrides included.
    """
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _check_appends(overrides)
    sources = find_config_dir(config_dir)
    _check_shadowing(sources)
    register_configs()
    search = [f"hydra.searchpath=[{','.join(p.as_uri() for p in sources.search_path)}]"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(sources.primary), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[*overrides, *search])
        with open_dict(cfg):
            cfg.project_dir = str(sources.project)
            if sources.user is not None:
                cfg.user_config_dir = str(sources.user)
        if values:
            with open_dict(cfg):  # the API declares the space: new keys are expected
                merged = OmegaConf.merge(cfg, dict(values))
            assert isinstance(merged, DictConfig)
            OmegaConf.set_struct(merged, True)
            cfg = merged
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError) as e:
        if _caused_by_yaml(e):
            _check_yaml(sources)  # names the file and line
        raise ConfigError(_describe_compose_error(e)) from e
    finally:
        GlobalHydra.instance().clear()
    if check:
        _fill_from_workload(cfg, sources.project)
        validate(cfg)
    return cfg


def _check_appends(overrides: list[str]) -> None:
    """``+key=value`` adds a key the schema does not have, which hpo would silently ignore
    (``+study.n_trial=3`` for ``study.n_trials``): only the free-form ``study.extra`` takes it."""
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0].strip()
        if not key.startswith("study.extra."):
            raise ConfigError(
                f"unknown key {key!r} in {override!r}: hpo reads no such key (a typo?); "
                "free settings for the objective go under +study.extra.NAME=..."
            )


def _check_shadowing(sources: ConfigSources) -> None:
    """A user's option named like a built-in one would be silently hidden by it: refuse."""
    if sources.user is None or sources.primary == sources.user:
        return
    for path in sorted(sources.user.glob("*/*.yaml")):
        builtin = sources.builtin / path.parent.name / path.name
        if builtin.is_file():
            raise ConfigError(
                f"{path} has the name of a built-in {path.parent.name} option "
                f"({path.stem!r}): rename it"
            )


def _fill_from_workload(cfg: DictConfig, project: Path) -> None:
    """A simulated study: resolve its workload file and take the search space (and, unless the
    study declares them, the memory-scaling parameters) from it."""
    workload = cfg.study.get("workload")
    if not workload:
        return
    from hpo.sim.workload import builtin_path, load_workload

    path = builtin_path(str(workload)) or Path(workload)
    if not path.is_absolute():  # relative to the project directory
        path = project / path
    cfg.study.workload = str(path.resolve())
    if not cfg.study.memory.scaling:  # the workload says what memory grows with
        cfg.study.memory.scaling = list(load_workload(cfg.study.workload).scaling or ["batch_size"])
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
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if text.endswith(":") and len(lines) > 1:  # "In 'study/x': … raised while composing config:"
        where = text.split(":", 1)[0]
        text = f"{where}: {lines[1]}"
        full_key = next((ln.split(":", 1)[1].strip() for ln in lines if "full_key:" in ln), "")
        if full_key:
            text += f" (key {full_key})"
    elif e.__cause__ is not None:
        text = f"{text.rstrip('.')}: {first_line(e.__cause__)}"
    return text


def _caused_by_yaml(e: BaseException | None) -> bool:
    import yaml

    while e is not None:
        if isinstance(e, yaml.YAMLError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _check_yaml(sources: ConfigSources) -> None:
    """Parse every YAML file of the config tree first: a syntax error names its file and line
    (Hydra's own message names neither)."""
    import yaml

    roots = [d for d in (sources.user, sources.builtin) if d is not None]
    for path in sorted({p for root in roots for p in root.rglob("*.yaml")}):
        try:
            yaml.safe_load(path.read_text())
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = e.problem or e.context or "invalid YAML"
            raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from e
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read it as YAML: {first_line(e)}") from e

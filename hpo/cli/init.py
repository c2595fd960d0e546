"""``hpo init NAME``: a runnable study in the current directory, to adapt to one's own training.

It writes ``conf/study/NAME.yaml`` (the study: search space, trials, epochs, memory hints) and
``NAME.py`` (the objective, a torch MLP on generated data that shows the whole contract), and
never overwrites a file.
"""

from __future__ import annotations

import keyword
from importlib import resources
from pathlib import Path

from hpo.errors import ConfigError


def init_study(name: str, directory: Path) -> list[Path]:
    """Write the two files of study ``name`` into ``directory``; returns their paths."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(
            f"NAME must be a Python identifier (it names the objective's module), got {name!r}"
        )
    if name in ("hpo", "optuna", "torch", "test", "conf"):
        raise ConfigError(f"NAME {name!r} would shadow a module of that name; choose another")
    yaml_path = directory / "conf" / "study" / f"{name}.yaml"
    module_path = directory / f"{name}.py"
    existing = [p for p in (yaml_path, module_path) if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]} exists: hpo init never overwrites (choose another NAME)")
    templates = resources.files("hpo.templates")
    yaml_text = templates.joinpath("study.yaml").read_text().format(name=name)
    module_text = templates.joinpath("study_template.py").read_text()
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((yaml_path, yaml_text), (module_path, module_text)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return [yaml_path, module_path]

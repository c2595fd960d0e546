"""The layout's invariants (docs/architecture.md, "Package map"), checked on the source's
import graph.

Every ``import`` statement in ``hpo/`` counts, lazy ones inside functions included; only
annotation-only imports (under ``if TYPE_CHECKING:``) do not, since they never run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "hpo"
LONG_MODULE = 500  # lines past which a module says in its docstring why it is one concept
MAX_TOP_LEVEL_MODULES = 6


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. hpo.look.stats
    target: str  # what it imports, resolved to a module where one exists
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path) -> Iterator[Import]:
    name = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                target = sub if sub.startswith("hpo") and _is_module(sub) else node.module
                yield Import(name, target, node.lineno)


def _all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in _imports(path)]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_hpo() -> None:
    edges: dict[str, set[str]] = {}
    for imp in _all_imports():
        if imp.target.startswith("hpo") and imp.target != imp.module:
            edges.setdefault(imp.module, set()).add(imp.target)
    assert _cycles(edges) == []


def _violations(package: str, allowed: re.Pattern[str]) -> list[str]:
    return [
        f"{i.module}:{i.line} imports {i.target}"
        for i in _all_imports()
        if (i.module == package or i.module.startswith(package + "."))
        and not allowed.match(i.target)
    ]


def test_look_imports_nothing_of_the_supervisor_or_the_workers() -> None:
    forbidden = re.compile(r"hpo\.(supervisor|execution)\b")
    bad = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in _all_imports()
        if i.module.startswith("hpo.look") and forbidden.match(i.target)
    ]
    assert bad == []


def test_pruners_import_only_optuna() -> None:
    stdlib = r"(__future__|math|typing|collections|dataclasses|functools)\b"
    allowed = re.compile(rf"(optuna\b|hpo\.pruners\b|{stdlib})")
    assert _violations("hpo.pruners", allowed) == []


PRIVATE_STORAGE = re.compile(
    r"\._storage\b|\._trial_id\b|\._study_id\b|_create_scoped_session|_get_stale_trial_ids"
    r"|\._backend\b|_set_trial_attr_without_commit"
)
HYPERBAND_INTERNALS = re.compile(r"_get_bracket_id|\._pruners\b|_n_brackets|_total_trial_alloc")


def _grep(pattern: re.Pattern[str], outside: str) -> list[str]:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / outside):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_optuna_private_storage_api_only_in_storage() -> None:
    assert _grep(PRIVATE_STORAGE, "storage") == []
    private_modules = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in _all_imports()
        if re.match(r"optuna(\.\w+)*\._", i.target) and not i.module.startswith("hpo.storage")
    ]
    assert private_modules == []


def test_hyperband_internals_only_in_pruners() -> None:
    assert _grep(HYPERBAND_INTERNALS, "pruners") == []


def test_the_private_names_hpo_relies_on_still_exist_in_optuna() -> None:
    """A newer Optuna that moves one of these fails here, not at a user's first trial."""
    from optuna.pruners import HyperbandPruner
    from optuna.storages import RDBStorage
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    assert callable(_create_scoped_session)
    assert hasattr(models, "TrialHeartbeatModel") and hasattr(models, "TrialUserAttributeModel")
    for name in ("_set_trial_attr_without_commit", "_get_stale_trial_ids"):
        assert callable(getattr(RDBStorage, name, None)), name
    assert callable(getattr(HyperbandPruner, "_get_bracket_id", None))


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_a_long_module_says_why_it_is_one_concept(path: Path) -> None:
    """Modules are sized by concept, not by count: one past about 500 lines says why it is one
    concept (its docstring names it so) instead of being split to meet a number."""
    text = path.read_text()
    if len(text.splitlines()) <= LONG_MODULE:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "one concept" in doc, f"{path.relative_to(ROOT)}: say why it is one concept"


def test_the_lazy_exports_of_hpo_have_their_real_signatures_for_type_checkers() -> None:
    """``hpo.tune`` and the other names ``hpo`` imports on first use are imported under
    ``TYPE_CHECKING`` too, so editors and mypy see their signatures, not ``Any``."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    seen: set[str] = {"__version__"}
    checking = _type_checking_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            seen.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Assign) and node.lineno not in checking:
            seen.update(t.id for t in node.targets if isinstance(t, ast.Name))
    assert exported and sorted(set(exported) - seen) == []


def test_few_modules_directly_in_hpo() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_function_docs_architecture_names_exists() -> None:
    """docs/architecture.md's lifecycle names ``module:function``: each one is still there."""
    import importlib

    text = (ROOT / "docs" / "architecture.md").read_text()
    refs = re.findall(r"`(hpo/[\w/]+)\.py:([\w.]+)`", text)
    assert len(refs) >= 15
    missing = []
    for path, dotted in refs:
        obj: object = importlib.import_module(path.replace("/", "."))
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            missing.append(f"{path}.py:{dotted}")
    assert missing == []

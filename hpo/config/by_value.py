"""Python objects that reach the worker processes by value: an objective (a lambda, a closure, a
bound method, a function of a script's ``__main__`` or of a notebook cell) and an Optuna study's
own sampler and pruner, pickled with cloudpickle in the caller's process.

A function of ``__main__`` (a script, a notebook) is pickled with its code and the globals it
uses, so the workers never import the caller's main module; a function of an importable module
travels by reference and is imported by the workers (they share the caller's ``sys.path``).
What cannot be pickled is one :class:`~hpo.errors.ConfigError` before anything starts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpo.config.validate import first_line
from hpo.errors import ConfigError


@dataclass(frozen=True)
class ByValue:
    """What the Python API hands the workers pickled (None: from the config, as ``hpo tune``)."""

    objective: bytes | None = None  # the objective, cloudpickled
    sampler: bytes | None = None  # the study's own sampler (an Optuna BaseSampler)
    pruner: bytes | None = None  # the study's own pruner (an Optuna BasePruner)


def pack(what: str, obj: Any) -> bytes:
    """``obj`` pickled by value; a ConfigError naming ``what`` if it cannot be."""
    import cloudpickle

    try:
        return bytes(cloudpickle.dumps(obj))
    except Exception as e:
        raise ConfigError(
            f"{what} cannot be sent to the worker processes: {type(e).__name__}: "
            f"{first_line(e)} (it, or something it uses, cannot be pickled: {obj!r})"
        ) from e


def unpack(data: bytes) -> Any:
    """An object :func:`pack` pickled (a fresh copy each call)."""
    import cloudpickle

    return cloudpickle.loads(data)


def takes_cfg(objective: Callable[..., Any]) -> bool:
    """Whether ``objective`` is called as ``objective(trial, cfg)`` (it takes a second
    positional argument) rather than Optuna's ``objective(trial)``."""
    try:
        params = list(inspect.signature(objective).parameters.values())
    except (TypeError, ValueError):  # no signature (a builtin): Optuna's way
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in positional for p in params) >= 2


def display_name(objective: Any) -> str:
    """``module:qualname`` of a callable, for logs and the study config."""
    module = getattr(objective, "__module__", None) or "callable"
    name = getattr(objective, "__qualname__", None) or type(objective).__qualname__
    return f"{module}:{name}"

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
    try:
        return _dumps(obj)
    except Exception as e:
        raise ConfigError(
            f"{what} cannot be sent to the worker processes: {type(e).__name__}: "
            f"{first_line(e)} (it, or something it uses, cannot be pickled: {obj!r})"
        ) from e


def _dumps(obj: Any) -> bytes:
    """cloudpickle's bytes of ``obj``, its functions' code keeping the file it came from.

    cloudpickle names the file of code it pickles by value ``<dynamic-code>`` (for payloads
    that do not depend on where a function was defined); a traceback in a worker then shows
    neither the file of a script's objective nor its source lines. Keeping the real file name
    lets ``traceback`` read them from the file, which the workers share.
    """
    import io
    import types
    from collections import ChainMap

    import cloudpickle

    reduce_code = getattr(cloudpickle.cloudpickle, "_code_reduce", None)

    def code_with_its_file(code: types.CodeType) -> Any:
        assert reduce_code is not None
        make, args = reduce_code(code)
        dynamic = "<dynamic-code>"
        return make, tuple(code.co_filename if a == dynamic else a for a in args)

    class FilePickler(cloudpickle.Pickler):  # type: ignore[misc]
        dispatch_table = ChainMap(
            {types.CodeType: code_with_its_file} if reduce_code is not None else {},
            cloudpickle.Pickler.dispatch_table,
        )

    buffer = io.BytesIO()
    FilePickler(buffer, protocol=cloudpickle.DEFAULT_PROTOCOL).dump(obj)
    return buffer.getvalue()


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

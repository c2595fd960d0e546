"""Progress of ``hpo.optimize`` in a notebook cell: one line, updated in place, with the
trials finished out of the target and the best value. In a terminal the supervisor's log
lines are the progress, as for ``hpo tune``."""

from __future__ import annotations

import sys
from typing import Any


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (an IPython shell with a kernel)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython()  # type: ignore[attr-defined]
    return ipython is not None and getattr(ipython, "kernel", None) is not None


class NotebookProgress:
    """One display in the running cell, updated as trials finish."""

    def __init__(self, name: str, target: int | None) -> None:
        from IPython.display import display

        self._name = name
        self._handle: Any = display(self._text(0, target, None), display_id=True)

    def __call__(self, done: int, target: int | None, best: float | None) -> None:
        if self._handle is not None:
            self._handle.update(self._text(done, target, best))

    def _text(self, done: int, target: int | None, best: float | None) -> Any:
        from IPython.display import Markdown

        count = f"{done}/{target}" if target is not None else f"{done}"
        value = "" if best is None else f" · best value {best:.6g}"
        return Markdown(f"**hpo** `{self._name}`: {count} trials finished{value}")

"""What an out-of-memory error says about how much memory a trial needs."""

from __future__ import annotations

import re

_UNITS = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TRIED = re.compile(r"tried to allocate\s+([0-9.]+)\s*([KMGT]i?B|B)", re.IGNORECASE)


def requested_bytes(message: str | None) -> int | None:
    """Bytes of the allocation that failed, read from a CUDA (or simulated) OOM message."""
    if not message:
        return None
    match = _TRIED.search(message)
    if match is None:
        return None
    unit = match.group(2).lower()
    unit = unit if unit in _UNITS else unit.replace("b", "ib")
    return int(float(match.group(1)) * _UNITS.get(unit, 1))


def needed_lower_bound(peak_bytes: float | None, message: str | None) -> float | None:
    """A trial that ran out of memory needed more than its peak plus the allocation that failed."""
    if peak_bytes is None:
        return None
    return float(peak_bytes) + float(requested_bytes(message) or 0)

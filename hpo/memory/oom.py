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


_SIZE = r"([0-9.]+)\s*([KMGT]i?B|B)"
_ALLOWED = re.compile(_SIZE + r"\s+allowed", re.IGNORECASE)
_IN_USE = re.compile(r"this process has\s+" + _SIZE + r"\s+memory in use", re.IGNORECASE)


def _size(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    unit = match.group(2).lower()
    unit = unit if unit in _UNITS else unit.replace("b", "ib")
    return float(match.group(1)) * _UNITS.get(unit, 1)


def hit_own_limit(message: str | None) -> bool | None:
    """Whether an OOM came from the process's own cap (True), from a full card (False), or
    the message does not say (None).

    The simulated card says "per-process limit" when the cap refused the allocation. Torch's
    caching allocator, under ``set_per_process_memory_fraction``, says "… this process has U
    memory in use. A allowed; …": the cap refused when U plus the request exceeds A; a message
    without "allowed" comes from a process with no cap, so from the card.
    """
    if not message or "out of memory" not in message.lower():
        return None
    if "per-process limit" in message:
        return True
    if "simulated" in message:
        return False
    allowed = _size(_ALLOWED.search(message))
    if allowed is None:
        return False if _IN_USE.search(message) else None
    in_use, request = _size(_IN_USE.search(message)), requested_bytes(message)
    if in_use is None or request is None:
        return None
    return in_use + request > allowed

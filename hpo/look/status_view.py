"""How ``hpo status`` draws a :class:`~hpo.look.status.Snapshot` with rich."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import RenderableType

    from hpo.look.db import StudyRef
    from hpo.look.status import DeviceView, Snapshot, TrialView

_STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")


def render(snap: Snapshot) -> RenderableType:
    """The whole frame: header and progress, states, running and recent trials, devices."""
    parts: list[RenderableType] = [_header(snap), _states(snap)]
    if snap.nodes:
        from hpo.look.nodes import render_nodes

        parts.append(render_nodes(snap.nodes))
    parts.append(_trials("running trials", snap.running, running=True))
    parts.append(_trials(f"last {len(snap.recent)} finished", snap.recent, running=False))
    if snap.devices:
        parts.append(_devices(snap.devices))
    else:
        parts.append(Text("devices: no GPU (NVML) or simulated GPU visible", style="dim"))
    return Group(*parts)


def render_error(ref: StudyRef, error: BaseException) -> RenderableType:
    return Text(f"study {ref.name}: cannot read {ref.shown} now ({error}); retrying", style="red")


def _header(snap: Snapshot) -> RenderableType:
    elapsed = _duration(snap.elapsed_s)
    title = Text.assemble(
        ("study ", "bold"), (snap.study, "bold cyan"), f"  {snap.url}  elapsed {elapsed}"
    )
    if not snap.target:
        return Group(title, Text(f"{snap.finished} finished trials (no target)"))
    done = min(snap.finished, snap.target)
    text = f"{done}/{snap.target} finished toward the run's target"
    if snap.finished_before_run is not None:
        text += f" ({max(0, snap.finished - snap.finished_before_run)} by this run)"
    if snap.finished > snap.target:
        text += f"; {snap.finished} finished in all"
    if snap.eta_s is not None and snap.per_hour is not None:
        text += f"; ETA {_duration(snap.eta_s)} at {snap.per_hour:.1f} trials/h"
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=snap.target, completed=done, width=40), Text(text))
    return Group(title, bar)


def _states(snap: Snapshot) -> RenderableType:
    states = [s for s in _STATES if s in snap.counts] + [
        s for s in sorted(snap.counts) if s not in _STATES
    ]
    line = "  ".join(f"{s} {snap.counts[s]}" for s in states) or "no trials yet"
    return Text(f"trials: {line}")


def _step(t: TrialView) -> str:
    if t.state == "WAITING":
        return "waiting"
    return str(t.step if t.step is not None else "-")


def _trials(title: str, trials: list[TrialView], running: bool) -> RenderableType:
    if not trials:
        return Text(f"{title}: none", style="dim")
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col in (
        "trial",
        "for" if running else "took",
        "epoch" if running else "end",
        "reserved",
        "vram",
        "rss",
        "device",
        "params",
    ):
        table.add_column(col, overflow="fold")
    for t in trials:
        table.add_row(
            str(t.number),
            _duration(t.seconds),
            _step(t) if running else _end(t),
            _mib(_held(t.attrs)),
            _mib(t.attrs.get("peak_vram_mib")),
            _rss(t),
            str(t.attrs.get("device", "-")),
            t.params,
        )
    return table


def _held(attrs: Mapping[str, Any]) -> Any:
    """What admission holds for the trial: settled, reserved, or at least its estimate."""
    return attrs.get("vram_settled_mib", attrs.get("vram_reserved_mib", attrs.get("est_vram_mib")))


def _end(t: TrialView) -> str:
    reason = str(t.attrs.get("end_reason", t.state.lower()))
    return f"{reason} {t.value:.4f}" if t.value is not None else reason


def _rss(t: TrialView) -> str:
    if t.live_rss_mib is not None:
        return f"{t.live_rss_mib:.0f} now"
    return _mib(t.attrs.get("peak_rss_mib"))


def _devices(devices: list[DeviceView]) -> RenderableType:
    table = Table(title="devices", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("device", "memory used", "capacity", "utilisation"):
        table.add_column(col)
    for d in devices:
        util = "-" if d.utilization is None else f"{100 * d.utilization:.0f}%"
        table.add_row(d.label, _mib(d.used_mib), _mib(d.capacity_mib), util)
    return table


def _mib(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value:
        value = value[-1]  # an estimate kept with its upper bound: show the bound
    return f"{float(value):.0f} MiB" if isinstance(value, (int, float)) else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

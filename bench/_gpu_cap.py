"""gpu_check part ``cap_overrun``: two trials under caps that add up to the card, one overruns.

Safe overcommit (issue 33) promises that a trial which needs more than its cap fails alone, at
the allocation that overran, ends ``cap_exceeded`` (not ``oom``) and is re-queued at once with
what it measured as its reservation. This part runs the real supervisor on the device (CUDA, or
in a dry run the simulated 24 GiB card) with two enqueued trials whose memory admission is told
(a known estimate, no spread: each reserves and is capped at exactly what it was told):

- ``fits``: told a third of the card, allocates a third;
- ``over``: told a third, allocates half: its own cap refuses it.

Both start side by side (their caps add up to two thirds of the card, within its budget). It
passes when ``fits`` completes untouched, ``over`` ends ``cap_exceeded`` with ``cap_need_mib``
at least what it allocated, its re-queued copy (``retry_kind=cap_exceeded``) completes, and no
trial ends ``oom``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench._gpu_parts import PartContext

if TYPE_CHECKING:
    import optuna
    from omegaconf import DictConfig

    from hpo.config import Settings
    from hpo.devices import Device
    from hpo.memory import MemoryGate, Verdict

MIB = 2**20
HOLD_S = {"cuda": 4.0, "dry-run": 1.5}  # each trial holds its memory this long
CARD_GIB = {"cuda": 8.0, "dry-run": 24.0}  # memory.capacity_gib: the card admission plans


def objective(trial: optuna.Trial, cfg: DictConfig) -> float:
    """Hold ``need_mib`` (its footprint, the context included) on the trial's device in two
    allocations, like weights then activations, for the part's hold time."""
    import hpo

    ctx = hpo.current_context()
    need = int(trial.params["need_mib"]) * MIB
    context = ctx.handle.context_bytes if ctx.handle is not None else 0
    nbytes = max(MIB, need - context)
    hold_s = float(cfg.study.extra.hold_s)
    if ctx.device.startswith("cuda"):
        import torch

        first = torch.empty(nbytes // 3, dtype=torch.uint8, device=ctx.device)
        rest = torch.empty(nbytes - nbytes // 3, dtype=torch.uint8, device=ctx.device)
        time.sleep(hold_s)
        del first, rest
        return 0.0
    gpu = ctx.handle
    try:
        gpu.allocate(nbytes // 3)
        gpu.allocate(nbytes - nbytes // 3)
        time.sleep(hold_s)
    finally:
        gpu.release()
    return 0.0


class ToldGate:
    """The memory gate, except that each trial's estimate is what its ``told_mib`` says
    (point and upper alike: no spread, so it reserves and is capped at exactly that)."""

    def __init__(self, inner: MemoryGate) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def check(self, params: dict[str, Any]) -> Verdict:
        from hpo.contract import Decision
        from hpo.memory import Estimate, EstimateSource, Verdict

        told = float(params["told_mib"]) * MIB
        estimate = Estimate(told, told, EstimateSource.KNOWN, 0)
        return Verdict(Decision.ADMIT, "told", estimate, self._inner.budget_bytes)


def _workload(path: Path, card_gib: float, fits_mib: int, over_mib: int) -> None:
    """A workload file for the simulated card (the search space holds the two trials)."""
    raw = {
        "name": "cap_overrun",
        "device": {"capacity_gib": card_gib, "context_gib": 0.5, "count": 1},
        "family_param": "model",
        "epochs": 1,
        "memory": {"scaling": ["told_mib"]},  # the same for both: neither waits for the other
        "space": {
            "model": {"type": "categorical", "choices": ["m"]},
            "told_mib": {"type": "categorical", "choices": [fits_mib]},
            "need_mib": {"type": "categorical", "choices": [fits_mib, over_mib]},
        },
        "families": {
            "m": {
                "peak_gib": [{"coef": 1.0}],
                "demand": {"base": 0.2},
                "curve": {"ceiling": 0.9},
            }
        },
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def settings_for(work: Path, dry_run: bool, root: str) -> tuple[Settings, int, int]:
    """The part's study: its settings and the two trials' footprints (MiB)."""
    from hpo.config import Settings, compose

    mode = "dry-run" if dry_run else "cuda"
    card = CARD_GIB[mode]
    fits, over = int(card * 1024 / 3), int(card * 1024 / 2)
    wl = work / "cap_overrun.yaml"
    _workload(wl, card, fits, over)
    overrides = [
        "study=simulated",
        "study.name=cap_overrun",
        f"study.workload={wl}",
        "study.objective=bench._gpu_cap:objective",
        f"+study.extra.hold_s={HOLD_S[mode]}",
        "study.n_trials=2",
        "study.memory.accumulation=false",
        "par=2",
        "memory.overcommit=true",
        "memory.settle=false",
        "faults.recycle_after=0",
        f"storage.dir={work / 'store'}",
    ]
    if not dry_run:
        overrides += ["study.device=cuda", f"memory.capacity_gib={card:g}"]
    conf = str(Path(root) / "hpo" / "conf")
    return Settings.from_config(compose(overrides, conf)), fits, over


def run_cap_overrun(work: Path, dry_run: bool, root: str) -> dict[str, Any]:
    """Run the two trials (module docstring); what became of each, and whether it passed."""
    import optuna

    from hpo.memory import build_gate
    from hpo.supervisor import Supervisor

    (work / "store").mkdir(parents=True, exist_ok=True)
    settings, fits, over = settings_for(work, dry_run, root)
    study = optuna.create_study(
        study_name=settings.study.name, storage=settings.storage.url, direction="maximize"
    )
    study.enqueue_trial({"model": "m", "told_mib": fits, "need_mib": fits})
    study.enqueue_trial({"model": "m", "told_mib": fits, "need_mib": over})

    def gate(settings: Settings, devices: list[Device]) -> Any:
        return ToldGate(build_gate(settings, devices))

    start = time.monotonic()
    Supervisor(settings, poll_s=0.05, gate_factory=gate).run()
    trials = _trials(settings.storage.url.removeprefix("sqlite:///"))
    return {"elapsed_s": round(time.monotonic() - start, 1), **judge(trials, fits, over)}


def _trials(db: str) -> list[dict[str, Any]]:
    import json

    con = sqlite3.connect(db)
    try:
        out = []
        for trial_id, number, state in con.execute(
            "SELECT trial_id, number, state FROM trials ORDER BY number"
        ):
            attrs = {
                k: json.loads(v)
                for k, v in con.execute(
                    "SELECT key, value_json FROM trial_user_attributes WHERE trial_id = ?",
                    (trial_id,),
                )
            }
            params = dict(
                con.execute(
                    "SELECT param_name, param_value FROM trial_params WHERE trial_id = ?",
                    (trial_id,),
                )
            )
            out.append({"number": number, "state": state, "attrs": attrs, "params": params})
        return out
    finally:
        con.close()


def judge(trials: list[dict[str, Any]], fits: int, over: int) -> dict[str, Any]:
    """Whether only the trial that overran failed, ``cap_exceeded``, and was re-queued."""
    ends = [(t["number"], t["attrs"].get("end_reason")) for t in trials]
    capped = [t for t in trials if t["attrs"].get("end_reason") == "cap_exceeded"]
    requeued = [t for t in trials if t["attrs"].get("retry_kind") == "cap_exceeded"]
    problems = []
    if any(reason == "oom" for _, reason in ends):
        problems.append("a trial ended oom")
    if len(capped) != 1:
        problems.append(f"{len(capped)} trials ended cap_exceeded, expected 1")
    elif float(capped[0]["attrs"].get("vram_reserved_mib", 0)) > over:
        problems.append("the trial that overran was not capped below what it needed")
    complete = [t for t in trials if t["attrs"].get("end_reason") == "complete"]
    if len(complete) != 2:
        problems.append(f"{len(complete)} trials completed, expected 2 (fits, over's re-queue)")
    if capped and not any(t["attrs"].get("retry_of") == capped[0]["number"] for t in requeued):
        problems.append("the trial that overran was not re-queued")
    elif requeued and float(requeued[0]["attrs"].get("cap_need_mib", 0)) < over * 0.9:
        problems.append("the re-queued trial does not reserve what it measured")
    elif requeued and requeued[0]["attrs"].get("end_reason") != "complete":
        problems.append("the re-queued trial did not complete")
    return {
        "fits_mib": fits,
        "over_mib": over,
        "ends": ends,
        "cap_need_mib": requeued[0]["attrs"].get("cap_need_mib") if requeued else None,
        "problems": problems,
        "passed": not problems,
    }


def run_part(ctx: PartContext) -> None:
    """The gpu_check part: the run above, ``ok`` when it passed."""
    spec = ctx.spec
    mode = "dry run on a simulated card" if spec.dry_run else "CUDA"
    ctx.say(f"two trials under caps that add up to the card, one overruns ({mode})")
    ctx.save()
    ctx.result |= run_cap_overrun(Path(spec.work) / ctx.name, spec.dry_run, spec.root)
    ctx.say(f"ends {ctx.result['ends']}; problems: {ctx.result['problems'] or 'none'}")
    if ctx.result["passed"]:
        ctx.finish("ok")
    else:
        ctx.finish("failed", "; ".join(ctx.result["problems"]))

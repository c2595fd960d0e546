"""Download, on a networked machine, the wheels hpo needs on an offline GPU machine.

``python -m bench.gpu_wheels [--dest .whl]`` (``make gpu-wheels``): walks hpo's runtime
requirements (and theirs) as installed in this environment, leaves out torch, the NVIDIA and
Triton packages and what the GPU machine's image already holds (:data:`ON_GPU_IMAGE`), and
downloads each remaining one, pinned to the version installed here, as a wheel for CPython 3.12
on x86-64 Linux (``pip download --no-deps --only-binary=:all:``). A project that publishes only
a source distribution (antlr4-python3-runtime 4.9.3) is built into a wheel here, and kept only
if that wheel is pure Python. Wheels of other versions in DEST are removed: two versions of one
package stop ``pip install``. ``make gpu-check`` installs DEST with
``pip install --no-index --no-deps --target`` and never touches torch.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
    "manylinux2014_x86_64", "manylinux1_x86_64", "any",
)  # fmt: skip
# Never carried: the GPU machine's own CUDA build of torch and what comes with it.
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
# Distributions the GPU machine's image ('cuda' image of the nvidia-h200 machines, package list
# of 2026-11) already holds, as normalised names; hpo's requirements among them are not carried.
ON_GPU_IMAGE = frozenset(
    """
    attrs certifi charset-normalizer click cloudpickle colorama contourpy cycler filelock
    fonttools fsspec idna iniconfig jinja2 joblib kiwisolver markdown-it-py markupsafe
    matplotlib mdurl mpmath networkx numpy nvidia-ml-py packaging pandas pillow pluggy psutil
    pygments pyparsing pytest pytest-timeout python-dateutil pyyaml requests rich scipy
    setuptools six sympy tqdm typing-extensions urllib3 narwhals wheel
    """.split()
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment(python_version: str) -> dict[str, str]:
    """Marker variables of CPython ``python_version`` on x86-64 Linux."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def needed(roots: list[str], python_version: str) -> dict[str, str]:
    """name -> installed version of every distribution to carry, found from ``roots``."""
    env = target_environment(python_version)
    plan: dict[str, str] = {}
    todo = [Requirement(r) for r in roots]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = normalise(req.name)
        if name in seen or NEVER.match(name) or name in ON_GPU_IMAGE:
            continue
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        seen.add(name)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(
                f"gpu-wheels: {req.name} is not installed here; run `make install` first"
            ) from None
        plan[name] = version
        todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    return dict(sorted(plan.items()))


def hpo_requirements() -> list[str]:
    """hpo's runtime requirements without extras (from its installed metadata)."""
    try:
        requires = metadata.requires("hpo") or []
    except metadata.PackageNotFoundError:
        raise SystemExit(
            "gpu-wheels: hpo is not installed here; run `make install` first"
        ) from None
    return [r for r in requires if "extra ==" not in r]


def download(name: str, version: str, dest: Path, python_version: str) -> Path:
    """The wheel of ``name==version`` for the GPU machine, in ``dest``."""
    before = set(dest.glob("*.whl"))
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [
        sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--implementation", "cp", *platform_args,
        "-d", str(dest), f"{name}=={version}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return _build_pure(name, version, dest, proc.stderr)
    return _wheel_of(name, version, dest, before)


def _build_pure(name: str, version: str, dest: Path, why: str) -> Path:
    """A source-only release built into a wheel here; only a pure-Python one will do."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp,
               f"{name}=={version}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels or not wheels[0].name.endswith("-none-any.whl"):
            last = (why.strip().splitlines() or ["?"])[-1]
            raise SystemExit(
                f"gpu-wheels: no wheel of {name}=={version} for the GPU machine: {last}"
            )
        target = dest / wheels[0].name
        wheels[0].replace(target)
        return target


def _wheel_of(name: str, version: str, dest: Path, before: set[Path]) -> Path:
    prefix = f"{name.replace('-', '_')}-{version}-".lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if not found:
        found = sorted(set(dest.glob("*.whl")) - before)
    if not found:
        raise SystemExit(f"gpu-wheels: pip saved no wheel of {name}=={version} in {dest}")
    return found[0]


def _project_of(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return normalise(name), version


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=str(ROOT / ".whl"), help="folder of the wheels")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (X.Y)")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    plan = needed(hpo_requirements(), args.python_version)
    print(f"gpu-wheels: {len(plan)} packages for CPython {args.python_version} x86-64: "
          + ", ".join(f"{n}=={v}" for n, v in plan.items()), flush=True)  # fmt: skip
    for wheel in dest.glob("*.whl"):
        name, version = _project_of(wheel)
        if plan.get(name) != version:
            print(f"gpu-wheels: removing {wheel.name} (not in the plan)")
            wheel.unlink()
    kept = [download(name, version, dest, args.python_version) for name, version in plan.items()]
    total = sum(w.stat().st_size for w in kept)
    for wheel in sorted(kept):
        print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"gpu-wheels: {len(kept)} wheels, {total / 2**20:.1f} MiB in {dest}")


if __name__ == "__main__":
    main()

"""Download what the GPU check needs beyond the GPU image (torch, triton, transformers,
accelerate, peft) into one folder, so it can travel to a machine with no network.

    python benchmarks/gpu_wheels.py .gpu-wheels

TRL 1.16.0 and Liger-Kernel 0.8.5 (the comparisons), and the small pure-Python packages this
package and pytest import, pinned to the versions installed here; pydantic-core, the one
compiled wheel, for each CPython the image may run.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PINNED = ["trl==1.16.0", "liger-kernel==0.8.5"]
# Imported by `anydistill bench`, the engine tests and pytest; absent from a bare GPU image.
SAME_AS_HERE = [
    "pydantic",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "typer",
    "shellingham",
    "click",
    "rich",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "pytest",
    "pluggy",
    "iniconfig",
]
COMPILED = "pydantic-core"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _pin(name: str) -> str | None:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: gpu_wheels.py FOLDER", file=sys.stderr)
        return 2
    dest = Path(sys.argv[1])
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(dest)]
    wanted = PINNED + [p for p in map(_pin, SAME_AS_HERE) if p]
    subprocess.run([*pip, "--only-binary=:all:", *wanted], check=True)
    core = _pin(COMPILED)
    for version in PYTHONS:
        platform = ["--platform", "manylinux2014_x86_64", "--python-version", version]
        subprocess.run([*pip, "--only-binary=:all:", *platform, core], check=True)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

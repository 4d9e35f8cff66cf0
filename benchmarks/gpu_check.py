"""The whole GPU check in one call: kernel and engine tests on CUDA, `bench loss` against TRL
and Liger-Kernel on the issue's four shapes, `bench step` for two students, one JSON each.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu-check-DATE   # on a GPU box
    python benchmarks/gpu_check.py --dry --out /tmp/check                    # anywhere

Every part runs in its own subprocess with its own time limit, so a failed or timed-out part
is a record (`status`, `error`, the output's tail), never an abort. `--dry` runs the same
parts on the CPU with tiny shapes and presets and writes the same layout; asking for the GPU
mode where no CUDA GPU is visible is refused in one sentence, before anything runs.

Wheels for TRL and Liger-Kernel (and this package's small pure-Python dependencies) that
`make gpu-wheels` put in `.gpu-wheels/` are installed first when the folder exists, for GPU
machines without a network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".gpu-wheels"
# Kernel and engine tests: every divergence, soft-cap, padded heads, fp32 and bf16 inputs,
# against the torch path and float64.
TEST_FILES = [
    "tests/test_triton_rows.py",
    "tests/test_engine.py",
    "tests/test_engine_precision.py",
    "tests/test_sparse_teacher.py",
    "tests/test_term_registry.py",
    "tests/test_zero_weight_invariance.py",
]
# (shape BT,V,Hs,Ht, divergence): the H100 anchors.
LOSS_CASES = [
    ("8192,128256,2048,4096", "jsd"),
    ("8192,128256,2048,4096", "fkl"),
    ("16384,151936,896,3584", "jsd"),
    ("32768,151936,1536,3584", "fkl"),
]
STEP_CASES = [("qwen2.5-7b", "qwen2.5-0.5b"), ("qwen2.5-7b", "qwen2.5-1.5b")]
DRY_LOSS_CASES = [("64,512,32,48", "jsd"), ("64,512,32,48", "fkl")]
DRY_STEP_CASES = [("tiny-teacher", "tiny-student")]


@dataclass
class Part:
    name: str
    argv: list[str]
    timeout_s: float
    out: Path | None = None  # the record file the part writes
    env: dict[str, str] = field(default_factory=dict)


def plan(out: Path, dry: bool) -> list[Part]:
    """The parts of the check, in order (the cheap, most telling ones first). Their time
    limits add up to under 8 minutes."""
    py = sys.executable
    parts = []
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml"]
    junit = out / "tests.xml"
    if dry:  # the same files, a slice of each, on the CPU through Triton's interpreter
        parts.append(Part("tests", [*tests, str(junit), "-k", "fkl", *TEST_FILES], 600))
    else:
        env = {"TRITON_INTERPRET": "0"}
        parts.append(Part("tests", [*tests, str(junit), *TEST_FILES], 150, env=env))
    device = "cpu" if dry else "cuda"
    dtype = "fp32" if dry else "bf16"
    engines = ["--engine", "torch"] if dry else ["--engine", "torch", "--engine", "triton"]
    for i, (shape, div) in enumerate(DRY_LOSS_CASES if dry else LOSS_CASES):
        record = out / f"loss-{i}-{div}.json"
        argv = [py, "-m", "anydistill", "bench", "loss", "--device", device, "--dtype", dtype]
        argv += ["--shape", shape, "--divergence", div, *engines, "--compare", "trl,liger"]
        argv += ["--warmup", "1", "--repeats", "1" if dry else "3", "--json", "--out", str(record)]
        parts.append(Part(f"loss {shape} {div}", argv, 50, record))
    for teacher, student in DRY_STEP_CASES if dry else STEP_CASES:
        record = out / f"step-{student}.json"
        argv = [py, "-m", "anydistill", "bench", "step", "--teacher", teacher]
        argv += ["--student", student, "--device", device, "--compare", "trl,liger"]
        if dry:
            argv += ["--batch", "2", "--seq-len", "32", "--steps", "1", "--warmup", "0"]
        argv += ["--json", "--out", str(record)]
        parts.append(Part(f"step {teacher} -> {student}", argv, 60, record))
    return parts


def run_part(part: Part) -> dict:
    """One part's record: status, seconds, the record file, the output's tail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **part.env}
    if part.env.get("TRITON_INTERPRET") == "0":
        env.pop("TRITON_INTERPRET", None)
    start = time.monotonic()
    try:
        done = subprocess.run(
            part.argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=part.timeout_s
        )
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        tail = (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {part.timeout_s:.0f} s"
        tail = ((err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(
            errors="replace"
        ))[-4000:]  # fmt: skip
    record = {"part": part.name, "status": status, "seconds": round(time.monotonic() - start, 1)}
    if part.out is not None and part.out.is_file():
        record["records"] = json.loads(part.out.read_text()).get("records", [])
    if status != "ok":
        record["output_tail"] = tail
    return record


def test_counts(junit: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from pytest's JUnit XML (empty when absent)."""
    if not junit.is_file():
        return {}
    import xml.etree.ElementTree as ET

    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        return {}
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


def environment() -> dict:
    """The machine: nvidia-smi, python, and the versions of the packages the check uses."""
    from importlib import metadata

    info: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }
    versions = {}
    for package in ("torch", "triton", "transformers", "trl", "liger-kernel", "pytest"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info["packages"] = versions
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    return info


def install_wheels() -> str:
    """Install `.gpu-wheels/` offline when it exists; a note on what happened. Packages are
    named, not files, so pip picks the pydantic-core wheel built for this Python."""
    if not WHEELS.is_dir():
        return "no .gpu-wheels/ folder: TRL and Liger are used only if already installed"
    names = sorted({p.name.split("-")[0].replace("_", "-") for p in WHEELS.glob("*.whl")})
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    argv += ["--find-links", str(WHEELS), *names]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return f"pip install from .gpu-wheels/ failed: {done.stderr.strip()[-500:]}"
    return f"installed {', '.join(names)} from .gpu-wheels/"


def cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON records")
    parser.add_argument("--dry", action="store_true", help="CPU, tiny shapes, same layout")
    parser.add_argument("--no-install", action="store_true", help="skip .gpu-wheels/")
    args = parser.parse_args(argv)
    if not args.dry and not cuda_visible():
        print(
            "error: no CUDA GPU is visible, so the GPU check cannot run here; use --dry to "
            "run the same parts on the CPU with tiny shapes",
            file=sys.stderr,
        )
        return 2
    out = args.out
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty; give a new folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    summary: dict = {"mode": "dry" if args.dry else "gpu"}
    summary["wheels"] = "skipped" if args.no_install or args.dry else install_wheels()
    summary["environment"] = environment()
    summary["parts"] = []
    for part in plan(out, args.dry):
        print(f"[gpu-check] {part.name} ...", file=sys.stderr, flush=True)
        record = run_part(part)
        if part.name == "tests":
            record["counts"] = test_counts(out / "tests.xml")
        summary["parts"].append(record)
        print(f"[gpu-check] {part.name}: {record['status']}", file=sys.stderr, flush=True)
        _write(out / "gpu_check.json", summary)  # a kill mid-check keeps the parts so far
    summary["seconds"] = round(time.monotonic() - start, 1)
    _write(out / "gpu_check.json", summary)
    failed = [p["part"] for p in summary["parts"] if p["status"] != "ok"]
    print(f"[gpu-check] done in {summary['seconds']} s; failed parts: {failed or 'none'}")
    return 0


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())

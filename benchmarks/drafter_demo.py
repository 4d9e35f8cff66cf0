"""Distilled drafter vs CE drafter on the demo task: speculative acceptance and speed-up.

Runs the demo (teacher cached, then the same small student trained with KD and with CE
only), then decodes held-out prompts speculatively with the demo teacher as the target and
each student as the drafter, at gamma 2 and 4, greedy (lossless: the output must equal the
teacher's own greedy output). Writes benchmarks/results/<date>-drafter-demo-cpu.json.

    python benchmarks/drafter_demo.py [--fast] [--prompts 40] [--max-new-tokens 48]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import torch

from anydistill.bench.machine import machine_info
from anydistill.cli_common import quiet_libraries
from anydistill.demo.run import FAST, FULL, _cached_teacher, run_demo
from anydistill.eval.speculate_cmd import run_speculate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the fast demo's models")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="reuse a previous run's models (skip training)"
    )
    args = parser.parse_args()
    quiet_libraries()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-drafter-"))
    reuse = (work / "student_kd" / "final").is_dir() and (work / "student_ce" / "final").is_dir()
    if reuse and (work / "demo.json").is_file():
        demo = json.loads((work / "demo.json").read_text())
    else:
        demo = run_demo(fast=args.fast, workdir=work, quiet=True)
        (work / "demo.json").write_text(json.dumps(demo))
    settings = FAST if args.fast else FULL
    teacher = _cached_teacher(settings, work / "data", work / "tokenizer", work, True, print)
    prompts = str(work / "data" / "eval.jsonl")
    records = []
    for gamma in (2, 4):
        for drafter in ("student_kd", "student_ce"):
            result = run_speculate(
                str(teacher),
                str(work / drafter),
                prompts,
                gamma=gamma,
                max_new_tokens=args.max_new_tokens,
                max_prompts=args.prompts,
                device="cpu",
            )
            record = {"drafter": drafter, "gamma": gamma, **result}
            records.append(record)
            print(
                f"gamma {gamma} {drafter}: acceptance {result['acceptance_rate']:.3f}, "
                f"tokens/call {result['mean_accepted']:.2f}, speedup {result['speedup']:.2f}, "
                f"greedy identical {result['greedy_identical']}"
            )
    date = dt.date.today().isoformat()
    out = args.out or Path(__file__).parent / "results" / f"{date}-drafter-demo-cpu.json"
    payload = {
        "benchmark": "drafter_demo",
        "machine": machine_info(torch.device("cpu")),
        "settings": {
            "fast": args.fast,
            "prompts": args.prompts,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 0.0,
        },
        "demo": demo,
        "records": records,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

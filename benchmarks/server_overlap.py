"""How much of a served teacher's latency the prefetch hides (CPU, tiny models).

A tiny llama teacher is served on 127.0.0.1 by the tests' vLLM-like server
(tests/logprob_server.py, in a process of its own), which adds a fixed latency to every
request; a student trains from its top-k (`teacher.kind: server`) four ways, the same steps
each:

- `no_latency`: no latency added, prefetch on (the student's step plus what the server's and
  the client's own work adds: the floor);
- `serial`: no prefetch: each micro-batch asks for its sequences when it needs them;
- `within_step`: a step's micro-batches are all asked for when the step starts, so micro-batch
  i + 1.. arrive while i trains;
- `prefetch` (what training does): as `within_step`, and the next step's micro-batches too
  (the dataset source can tell them without moving).

Reports each way's median step time (the first step left out) and the share of the latency
hidden. Writes benchmarks/results/<date>-server-overlap-cpu.json (or --out).

    python benchmarks/server_overlap.py
    python benchmarks/server_overlap.py --steps 4 --delay 0.05     # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.bench.machine import machine_info
from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.data.synthetic import arithmetic_problems
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.sources.base import Source
from anydistill.teachers.server import ServerTeacher
from anydistill.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WAYS = ("no_latency", "serial", "within_step", "prefetch")


@contextlib.contextmanager
def way(name: str, teacher_dir: Path, delay: float) -> Iterator[str]:
    """A server with the latency `name` asks for (its URL), and the prefetch switched as
    `name` says; all undone after."""
    prefetch, peek = ServerTeacher.prefetch, Source.peek
    latency = "0" if name == "no_latency" else str(delay)
    command = [sys.executable, str(ROOT / "tests" / "logprob_server.py"), str(teacher_dir)]
    process = subprocess.Popen(
        [*command, "tiny-teacher", latency], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if name == "serial":
        ServerTeacher.prefetch = lambda self, batches: None  # type: ignore[method-assign]
    if name == "within_step":
        Source.peek = lambda self, count: None  # type: ignore[method-assign]
    try:
        yield url
    finally:
        ServerTeacher.prefetch, Source.peek = prefetch, peek  # type: ignore[method-assign]
        process.terminate()
        process.wait()


def recipe(args: argparse.Namespace, url: str, tok_dir: Path, out: Path) -> dict:
    student = dict(
        model_type="llama", hidden_size=args.student_width, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=4 * args.student_width,
        max_position_embeddings=256,
    )  # fmt: skip
    return {
        "teacher": {
            "kind": "server",
            "url": url,
            "model": "tiny-teacher",
            "tokenizer": str(tok_dir),
            "top_k": 20,
            "max_concurrency": args.concurrency,
            "retries": 0,
        },  # fmt: skip
        "student": {"init": student},
        "data": {
            "synthetic": "arithmetic",
            "synthetic_size": 1000,
            "seq_len": 128,
            "packing": False,
        },  # fmt: skip
        "objective": {"terms": [{"kind": "fkl"}]},
        "train": {
            "max_steps": args.steps,
            "micro_batch_size": args.micro_batch,
            "grad_accum": args.grad_accum,
            "warmup_steps": 0,
            "log_every": 1,
            "progress": False,
            "save_every": 0,
            "save_minutes": 0,
            "device": "cpu",
        },  # fmt: skip
        "eval": {"every": 0},
        "output": {"dir": str(out), "report": False, "save_final": False},
    }


def step_seconds(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train_s"] for r in rows if r["kind"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds added per request")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--student-width", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = train_tokenizer([r["text"] for r in arithmetic_problems(400, seed=0)], 384)
        config = AutoConfig.for_model(
            "llama", vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
            max_position_embeddings=256,
        )  # fmt: skip
        torch.manual_seed(0)
        teacher = work / "teacher"
        AutoModelForCausalLM.from_config(config).save_pretrained(teacher)
        tok.save_pretrained(teacher)
        results: dict[str, Any] = {}
        for name in WAYS:
            with way(name, teacher, args.delay) as url:
                start = time.perf_counter()
                run = work / name
                train(config_from_dict(recipe(args, url, teacher, run)))
                wall = time.perf_counter() - start
            seconds = step_seconds(run)
            results[name] = {
                "median_step_s": statistics.median(seconds[1:] or seconds),
                "first_step_s": seconds[0],
                "steps_s": [round(s, 4) for s in seconds],
                "wall_s": wall,
            }
            print(json.dumps({name: results[name]["median_step_s"]}), flush=True)
    floor, serial = results["no_latency"]["median_step_s"], results["serial"]["median_step_s"]
    for name in ("within_step", "prefetch"):
        added = serial - floor  # the latency a step pays without prefetch
        results[name]["latency_hidden"] = (serial - results[name]["median_step_s"]) / added
    report = {
        "benchmark": "server-overlap",
        "date": dt.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(torch.device("cpu")),
        "settings": {
            "steps": args.steps,
            "delay_s_per_request": args.delay,
            "micro_batch_size": args.micro_batch,
            "grad_accum": args.grad_accum,
            "max_concurrency": args.concurrency,
            "top_k": 20,
            "seq_len": 128,
            "teacher": "llama 64x2 (random init), served on 127.0.0.1 by another process",
            "student": f"llama {args.student_width}x4 (random init)",
            "sequences_per_step": args.micro_batch * args.grad_accum,
        },  # fmt: skip
        "ways": results,
    }
    out = args.out or RESULTS / f"{report['date']}-server-overlap-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Where the sequences come from, compared at equal wall-clock on the CPU, on the demo task.

Five students, same architecture, same objective (forward KL, T = 1), same cached demo
teacher, same data (the demo's small distillation set of arithmetic word problems); only the
source of the training sequences differs:

- `dataset_kd`: the dataset's completions (supervised KD);
- `seq_kd`: the teacher's samples, generated once up front (their cost is charged to the
  budget);
- `on_policy`: the current student's samples (GKD with lambda = 1);
- `mixture`: the student's samples with probability 0.5, else the dataset's (GKD, lambda 0.5);
- `adaptive_replay`: DistiLLM's replay buffer, used with a probability that grows when the
  held-out loss stalls (its evaluations are charged to the budget).

Equal wall-clock: a short probe run per method measures seconds per step (generation
included) and any fixed cost (upfront generation); the real run then gets as many steps as
fit in `--budget-s`. The table reports held-out exact-match accuracy of greedy answers
(`eval.generation.exact_match_accuracy`), bits per byte, steps and the seconds really spent.

    python benchmarks/sources_demo.py                     # full demo teacher, 240 s per method
    python benchmarks/sources_demo.py --fast --budget-s 20 --threads 1   # a quick check

Writes benchmarks/results/<date>-sources-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.demo.run import FAST, FULL, DemoSettings, _cached_teacher, _recipe, _write_data
from anydistill.demo.run import llama_init as demo_llama_init
from anydistill.eval.generation import exact_match_accuracy
from anydistill.models.loading import load_pretrained
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
METHODS: dict[str, dict[str, Any]] = {
    "dataset_kd": {"kind": "dataset"},
    "seq_kd": {"kind": "teacher_generated", "mode": "upfront"},
    "on_policy": {"kind": "student_generated"},
    "mixture": {"kind": "mixture", "lambda": 0.5, "off_policy": "dataset"},
    "adaptive_replay": {
        "kind": "adaptive_replay",
        "off_policy": "dataset",
        "replay": {"buffer_size": 256, "init_prob": 0.0, "prob_step": 0.1},
    },
}


def recipe(
    s: DemoSettings, work: Path, name: str, steps: int, args: argparse.Namespace, probe: bool
) -> dict[str, Any]:
    data_dir, tok_dir = work / "data", work / "tokenizer"
    out = work / (f"probe-{name}" if probe else name)
    teacher = {"path": str(args.teacher_dir)}
    student = {"init": demo_llama_init(s.student_dims, s.seq_len)}
    terms = [{"kind": "fkl", "temperature": 1.0}]
    r = _recipe(
        s, data_dir, tok_dir, out, teacher, student, terms, steps, s.student_lr, True, False
    )
    source = json.loads(json.dumps(METHODS[name]))
    source["generation"] = {
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": s.batch_size,
    }
    source["store"] = str(work / "store")  # seq_kd's upfront samples, shared by probe and run
    r["source"] = source
    r["train"].update(log_every=1, progress=False)
    r["eval"].update(max_batches=args.eval_batches)
    if name == "adaptive_replay":
        r["eval"]["every"] = 2 if probe else max(1, steps // args.replay_evals)
    r["output"].update(report=False, save_final=not probe)
    return r


def timing(run: Path) -> dict[str, float]:
    """What a run spent: the step loop, generation, upfront generation, periodic evals."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"][:-1]  # the last one is the final eval
    frac = [r["student_frac"] for r in train_rows if "student_frac" in r]
    later = train_rows[1:] or train_rows  # the first step pays one-time costs
    step_s = sum(r["gen_s"] + r["train_s"] for r in later) / len(later)
    loop = train_rows[-1]["elapsed_s"]
    return {
        "loop_s": loop,
        "step_s": step_s,
        "eval_s": max(loop - sum(r["gen_s"] + r["train_s"] for r in train_rows), 0.0)
        / max(len(evals), 1),
        "gen_s": sum(r["gen_s"] for r in train_rows),
        "upfront_s": sum(r["gen_s"] for r in rows if r["kind"] == "generate"),
        "steps": train_rows[-1]["step"],
        "student_frac": sum(frac) / len(frac) if frac else 0.0,
    }


def run_method(s: DemoSettings, work: Path, name: str, args, held_out, tok) -> dict[str, Any]:
    probe = train(config_from_dict(recipe(s, work, name, args.probe_steps, args, probe=True)))
    t = timing(probe)
    fixed = t["upfront_s"] + (args.replay_evals * t["eval_s"] if name == "adaptive_replay" else 0)
    steps = max(1, int((args.budget_s - fixed) / max(t["step_s"], 1e-3)))
    tick = time.perf_counter()
    run = train(config_from_dict(recipe(s, work, name, steps, args, probe=False)))
    wall = time.perf_counter() - tick
    final = timing(run)
    metrics = json.loads((run / "eval.json").read_text())
    model = load_pretrained(str(run / "final"), field=name, dtype=torch.float32)
    accuracy = exact_match_accuracy(
        model, tok, held_out[: s.n_accuracy], max_new_tokens=args.max_new_tokens
    )
    return {
        "accuracy": accuracy,
        "bits_per_byte": metrics["student/bits_per_byte"],
        "steps": steps,
        "seconds_per_step_probe": t["step_s"],
        "budget_s": args.budget_s,
        "charged_s": final["loop_s"] + t["upfront_s"],
        "loop_s": final["loop_s"],
        "upfront_gen_s": t["upfront_s"],
        "gen_s": final["gen_s"],
        "student_frac": final["student_frac"],
        "run_wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="the demo's FAST settings/teacher")
    parser.add_argument("--budget-s", type=float, default=240.0, help="wall-clock per method")
    parser.add_argument("--probe-steps", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=4, help="held-out batches per eval")
    parser.add_argument("--replay-evals", type=int, default=10, help="evals in a replay run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = FAST if args.fast else FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-sources-"))
    held_out = _write_data(s, work / "data")
    texts = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in texts], s.vocab_size)
    tok.save_pretrained(str(work / "tokenizer"))
    args.teacher_dir = _cached_teacher(s, work / "data", work / "tokenizer", work, True, print)
    results = {}
    for name in args.methods.split(","):
        print(f"{name}: probing, then training for {args.budget_s:.0f} s", flush=True)
        results[name] = run_method(s, work, name, args, held_out, tok)
        print(json.dumps({name: results[name]}), flush=True)
    report = {
        "date": dt.date.today().isoformat(),
        "what": "held-out exact-match accuracy at equal wall-clock per source (demo task)",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "demo": "fast" if args.fast else "full",
            "objective": "fkl, T=1",
            "n_accuracy": s.n_accuracy,
            "max_new_tokens": args.max_new_tokens,
            "budget_s": args.budget_s,
            "probe_steps": args.probe_steps,
        },
        "results": results,
    }
    out = args.out or RESULTS / f"{report['date']}-sources-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Distilling through the teacher's traces vs its logits, on the demo task (CPU).

The demo's cached teacher (full settings) samples N = 4 traces of each of the students' 400
problems with `anydistill generate` (T = 1, verified against each problem's `#### N` answer,
prompts deduplicated, traces kept with their label). Then one student shape (the demo's 64x2)
trains for the same number of optimizer steps from random weights, four ways:

- `dataset_kd`: forward KL to the live teacher on the dataset's own completions;
- `sft_all`: cross-entropy on every trace, right or wrong;
- `sft_verified`: cross-entropy on the verified-correct traces only;
- `verified_redi`: half the steps of `sft_verified`, then REDI (Xu et al. 2025: -log p(correct)
  / len + 0.8 log p(incorrect) / len on pairs of one correct and one incorrect trace of the
  same prompt, plus cross-entropy on the correct one) for the other half, from there, at a
  tenth of the learning rate (`--redi-lr`).

Scored on 200 held-out problems: greedy exact-match accuracy and bits per byte of the
reference solutions. Writes benchmarks/results/<date>-traces-demo-cpu.json (or --out), with
the generation card's counts.

    python benchmarks/traces_demo.py                    # 300 steps per student
    python benchmarks/traces_demo.py --steps 20 --n-accuracy 20 --prompts 64   # a quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anydistill.bench.machine import machine_info
from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.demo.run import FULL, _cached_teacher, _recipe, _write_data
from anydistill.demo.run import llama_init as demo_llama_init
from anydistill.eval.generation import exact_match_accuracy
from anydistill.models.loading import load_pretrained
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.traces.pipeline import generate_traces
from anydistill.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"


def generate(work: Path, teacher_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Traces of the students' problems; returns the card."""
    data = work / "data"
    prompts = data / "student.jsonl"
    if args.prompts:
        lines = prompts.read_text().splitlines()[: args.prompts]
        prompts = data / "prompts.jsonl"
        prompts.write_text("".join(x + "\n" for x in lines))
    recipe = _recipe(
        FULL,
        data,
        work / "tokenizer",
        work / "unused",
        {"path": str(teacher_dir)},
        {"init": demo_llama_init(FULL.student_dims, FULL.seq_len)},
        [{"kind": "ce"}],
        1,
        1e-3,
        True,
        False,
    )
    recipe["data"].update(path=str(prompts), eval_fraction=0.0)
    recipe["data"].pop("eval_path")
    recipe["train"]["warmup_steps"] = 0  # a training section is required; generate ignores it
    recipe["generate"] = {
        "samples_per_prompt": args.samples,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": 32,
        "keep": "all",  # the students choose what to read: all, or the verified ones
        "dedup": {"prompts": True, "traces": False},  # N traces per prompt, repeats included
        "seed": 0,
    }
    generate_traces(config_from_dict(recipe), work / "traces", progress=False)
    return json.loads((work / "traces" / "card.json").read_text())


def split_traces(work: Path) -> dict[str, Path]:
    rows = [json.loads(x) for x in (work / "traces" / "traces.jsonl").read_text().splitlines()]
    verified = work / "verified.jsonl"
    verified.write_text("".join(json.dumps(r) + "\n" for r in rows if r["verified"] == "correct"))
    return {"all": work / "traces" / "traces.jsonl", "verified": verified}


def run(
    work: Path,
    name: str,
    teacher_dir: Path,
    student: dict,
    terms: list,
    steps: int,
    data_path: Path,
    lr: float,
    source: dict | None = None,
) -> Path:
    recipe = _recipe(
        FULL,
        work / "data",
        work / "tokenizer",
        work / name,
        {"path": str(teacher_dir)},
        student,
        terms,
        steps,
        lr,
        True,
        False,
    )
    recipe["data"]["path"] = str(data_path)
    recipe["output"]["report"] = False
    if source is not None:
        recipe["source"] = source
    return train(config_from_dict(recipe))


def score(out: Path, name: str, tok, held_out, n: int) -> dict[str, float]:
    metrics = json.loads((out / "eval.json").read_text())
    model = load_pretrained(str(out / "final"), field=name, dtype=torch.float32)
    return {
        "bits_per_byte": metrics["student/bits_per_byte"],
        "accuracy": exact_match_accuracy(model, tok, held_out[:n]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=FULL.student_lr)
    # REDI's negative half is unbounded: at the SFT rate it drives log p(incorrect) to -30 per
    # token and the student collapses; the paper's second stage also runs at a lower rate.
    parser.add_argument("--redi-lr", type=float, default=FULL.student_lr / 10)
    parser.add_argument("--samples", type=int, default=4, help="traces per prompt (N)")
    parser.add_argument("--prompts", type=int, default=None, help="first K problems only")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--n-accuracy", type=int, default=FULL.n_accuracy)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_libraries()
    s = FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-traces-"))
    held_out = _write_data(s, work / "data")
    texts = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in texts], s.vocab_size)
    tok.save_pretrained(str(work / "tokenizer"))
    teacher_dir = _cached_teacher(s, work / "data", work / "tokenizer", work, True, print)
    tick = time.perf_counter()
    card = generate(work, teacher_dir, args)
    gen_s = time.perf_counter() - tick
    print(json.dumps({"card": card["output"], "verification": card["verification"]}), flush=True)
    files = split_traces(work)
    student = {"init": demo_llama_init(s.student_dims, s.seq_len)}
    half = max(1, args.steps // 2)
    plans = {
        "dataset_kd": (
            [{"kind": "fkl", "temperature": 1.0}],
            args.steps,
            work / "data" / "student.jsonl",
            student,
            None,
        ),
        "sft_all": ([{"kind": "ce"}], args.steps, files["all"], student, None),
        "sft_verified": ([{"kind": "ce"}], args.steps, files["verified"], student, None),
        "verified_redi_stage1": ([{"kind": "ce"}], half, files["verified"], student, None),
    }
    results: dict[str, Any] = {}
    for name, (terms, steps, data, init, source) in plans.items():
        tick = time.perf_counter()
        out = run(work, name, teacher_dir, init, terms, steps, data, args.lr, source)
        results[name] = {
            **score(out, name, tok, held_out, args.n_accuracy),
            "steps": steps,
            "seconds": time.perf_counter() - tick,
        }
        print(json.dumps({name: results[name]}), flush=True)
    stage1 = {"path": str(work / "verified_redi_stage1" / "final")}
    redi = [{"kind": "redi", "alpha": 0.8}, {"kind": "ce"}]
    tick = time.perf_counter()
    out = run(
        work,
        "verified_redi",
        teacher_dir,
        stage1,
        redi,
        args.steps - half,
        files["all"],
        args.redi_lr,
        {"kind": "paired_traces"},
    )
    results["verified_redi"] = {
        **score(out, "verified_redi", tok, held_out, args.n_accuracy),
        "steps": args.steps,
        "seconds": time.perf_counter() - tick,
    }
    print(json.dumps({"verified_redi": results["verified_redi"]}), flush=True)
    teacher = load_pretrained(str(teacher_dir), field="teacher", dtype=torch.float32)
    report = {
        "date": dt.date.today().isoformat(),
        "what": "dataset KD vs SFT on all / verified traces vs verified + REDI, demo task",
        "machine": machine_info(torch.device("cpu")),
        "settings": {
            "demo": "full",
            "steps": args.steps,
            "lr": args.lr,
            "redi_lr": args.redi_lr,
            "batch_size": s.batch_size,
            "samples_per_prompt": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "n_accuracy": args.n_accuracy,
            "generate_seconds": gen_s,
        },
        "card": {
            k: card[k]
            for k in ("prompts", "samples_per_prompt", "verification", "stages", "output")
        },
        "teacher": {"accuracy": exact_match_accuracy(teacher, tok, held_out[: args.n_accuracy])},
        "results": results,
    }
    out_path = args.out or RESULTS / f"{report['date']}-traces-demo-cpu.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()

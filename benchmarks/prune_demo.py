"""Students cut from the teacher vs students started elsewhere, on the demo task (CPU).

Same cached demo teacher (full settings: 128 wide, 4 layers), same distillation set, same
objective (forward KL, T = 1) and the same optimizer-step budget for every student of one
size (about half the teacher's parameters):

- `random_kd`: a random-init student of the depth-pruned shape (2 layers, 128 wide);
- `layer_copy_kd`: teacher layers 0 and 3 copied (`student.from_teacher.layers`);
- `depth_pruned_kd`: Minitron depth pruning to 2 layers by block importance (1 - cos);
- `width_pruned_kd`: Minitron width pruning (hidden 128 -> 88 channels, MLP 512 -> 344
  neurons, all 4 layers) to about the same parameter count;
- `*_hidden`: the same plus a `hidden` cosine term on evenly spaced layer pairs;
- `random_kd_long`: the random-init student with `--long-factor` times the steps, to test
  Minitron's claim that pruned + KD needs far fewer tokens than training from scratch.

Each student is scored before training (step 0: what the cut alone keeps) and after, on
held-out bits per byte and greedy exact-match accuracy. Writes
benchmarks/results/<date>-prune-demo-cpu.json (or --out).

    python benchmarks/prune_demo.py                       # 300 steps per student
    python benchmarks/prune_demo.py --steps 20 --long-factor 2 --n-accuracy 20   # a quick check
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
from transformers import AutoModelForCausalLM

from anydistill.bench.machine import machine_info
from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.demo.run import FULL, _cached_teacher, _recipe, _write_data
from anydistill.demo.run import llama_init as demo_llama_init
from anydistill.eval.generation import exact_match_accuracy
from anydistill.models.loading import load_pretrained
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN = {"kind": "hidden", "weight": 1.0, "options": {"layers": "auto", "loss": "cosine"}}


def students(long_factor: int) -> dict[str, dict[str, Any]]:
    """name -> (student section, extra terms, step factor)."""
    small = demo_llama_init((FULL.teacher_dims[0], 2, FULL.teacher_dims[2]), FULL.seq_len)
    depth = {"from_teacher": {"prune": {"num_hidden_layers": 2, "calibration": 64}}}
    # About the same parameter count as the 2-layer students (588,8xx vs 590,xxx).
    width = {"from_teacher": {"prune": {"hidden_size": 88, "intermediate_size": 344}}}
    return {
        "random_kd": {"student": {"init": small}},
        "layer_copy_kd": {"student": {"from_teacher": {"layers": [0, 3]}}},
        "depth_pruned_kd": {"student": depth},
        "width_pruned_kd": {"student": width},
        "depth_pruned_kd_hidden": {"student": depth, "terms": [HIDDEN]},
        "width_pruned_kd_hidden": {"student": width, "terms": [HIDDEN]},
        "random_kd_long": {"student": {"init": small}, "factor": long_factor},
    }


def parameter_count(init: dict[str, Any], vocab: int) -> int:
    from transformers import AutoConfig

    config = AutoConfig.for_model(**{**init, "vocab_size": vocab})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def score(run: Path, name: str, tok, held_out, n: int) -> dict[str, float]:
    metrics = json.loads((run / "eval.json").read_text())
    model = load_pretrained(str(run / "final"), field=name, dtype=torch.float32)
    return {
        "bits_per_byte": metrics["student/bits_per_byte"],
        "accuracy": exact_match_accuracy(model, tok, held_out[:n]),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per student")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--long-factor", type=int, default=4)
    parser.add_argument("--n-accuracy", type=int, default=FULL.n_accuracy)
    parser.add_argument("--only", default=None, help="comma-separated student names")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-prune-"))
    held_out = _write_data(s, work / "data")
    texts = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in texts], s.vocab_size)
    tok.save_pretrained(str(work / "tokenizer"))
    teacher_dir = _cached_teacher(s, work / "data", work / "tokenizer", work, True, print)
    small = demo_llama_init((s.teacher_dims[0], 2, s.teacher_dims[2]), s.seq_len)
    params = parameter_count(small, s.vocab_size)
    chosen = students(args.long_factor)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results: dict[str, Any] = {}
    for name, spec in chosen.items():
        steps = args.steps * spec.get("factor", 1)
        terms = [{"kind": "fkl", "temperature": 1.0}, *spec.get("terms", [])]
        out = {}
        for phase, n_steps, lr in (("start", 1, 1e-12), ("trained", steps, args.lr)):
            recipe = _recipe(s, work / "data", work / "tokenizer", work / f"{name}-{phase}",
                             {"path": str(teacher_dir)}, spec["student"], terms, n_steps, lr,
                             True, False)  # fmt: skip
            recipe["output"]["report"] = False
            if n_steps == 1:
                recipe["train"]["warmup_steps"] = 0
            tick = time.perf_counter()
            run = train(config_from_dict(recipe))
            out[phase] = {**score(run, name, tok, held_out, args.n_accuracy),
                          "steps": n_steps, "seconds": time.perf_counter() - tick}  # fmt: skip
        results[name] = out
        print(json.dumps({name: out}), flush=True)
    teacher = load_pretrained(str(teacher_dir), field="teacher", dtype=torch.float32)
    report = {
        "date": dt.date.today().isoformat(),
        "what": "pruned / copied / random students + KD at one step budget, demo task",
        "machine": machine_info(torch.device("cpu")),
        "settings": {
            "demo": "full",
            "objective": "fkl, T=1 (+ hidden cosine, auto pairs, weight 1 where named)",
            "steps": args.steps,
            "lr": args.lr,
            "batch_size": s.batch_size,
            "n_accuracy": args.n_accuracy,
            "target_params": params,
        },
        "teacher": {
            "params": sum(p.numel() for p in teacher.parameters()),
            "accuracy": exact_match_accuracy(teacher, tok, held_out[: args.n_accuracy]),
        },
        "results": results,
    }
    out_path = args.out or RESULTS / f"{report['date']}-prune-demo-cpu.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()

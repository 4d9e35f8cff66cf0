"""Hybrid students converted from the teacher vs students started elsewhere, on the demo task (CPU).

Same cached demo teacher (full settings: 128 wide, 4 layers), same distillation set, same
objective (forward KL, T = 1) and the same optimizer-step budget for every student:

- `hybrid_staged`: the teacher converted to a Mamba-2 hybrid (`bamba`, attention kept in 25%
  of the layers, evenly spaced; `student.from_teacher.convert`), then in `stages:` mixer
  alignment (`mixer` term, only the new mixers train, `--align-fraction` of the steps at
  `--align-lr`) and end-to-end KD for the rest;
- `hybrid_kd`: the same conversion, KD only for every step;
- `hybrid_random_kd`: a random-init `bamba` student of exactly the converted student's config
  (from `plan_conversion` on the teacher's config) + KD;
- `transformer_kd`: a random-init Llama of the teacher's shape, its MLP width chosen so its
  parameter count is the nearest to the hybrid's, + KD;
- `hybrid_gdn_staged`: as `hybrid_staged`, converted to Gated DeltaNet (`qwen3_5_text`).

Each student is scored before training (step 0: a converted student as the conversion left
it; `aligned`: after the mixer-alignment stage alone, for the staged ones) and after, on
held-out bits per byte and greedy exact-match accuracy, with its wall seconds.

Then generation (`anydistill.bench.generate`, the library behind `anydistill bench generate`):
a teacher-shaped Llama against the converted hybrids, random weights, `max_position_embeddings`
raised to fit the longest prompt: prefill seconds, decode tokens/s, peak extra memory and the
generation cache's bytes per prompt length (one tracked run, then the median of `--repeats`
timed ones). A length whose measured growth predicts more than `--max-case-s` seconds for one
model is recorded as skipped, with the estimate.

Writes benchmarks/results/<date>-hybrid-demo-cpu.json (or --out; --quick writes into the work
directory unless --out is given).

    python benchmarks/hybrid_demo.py            # 300 steps per student, prompts 1k, 4k, 16k
    python benchmarks/hybrid_demo.py --quick    # 20 steps, 20 problems, short prompts: a check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.bench.generate import GenerateSettings, bench_generate
from anydistill.bench.machine import machine_info
from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.demo.run import FULL, _cached_teacher, _recipe, _write_data
from anydistill.demo.run import llama_init as demo_llama_init
from anydistill.eval.generation import exact_match_accuracy
from anydistill.models.convert import ConvertSpec, plan_conversion
from anydistill.models.loading import config_class_for, init_keys, load_pretrained
from anydistill.models.tokenizer_training import train_tokenizer
from anydistill.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
KEEP = {"fraction": 0.25}
FKL = {"kind": "fkl", "temperature": 1.0}
MIXER = {"kind": "mixer"}


def convert_section(to: str) -> dict[str, Any]:
    return {"from_teacher": {"convert": {"to": to, "keep_attention": dict(KEEP)}}}


def converted_init(teacher_config: Any, to: str) -> tuple[dict[str, Any], list[str]]:
    """The converted student's transformers config as a `student.init` section, and the plan's
    keys its config class does not declare (bamba has no `head_dim`: it derives the same 32),
    which `student.init` refuses; the model built without them has the same parameters."""
    plan = plan_conversion(teacher_config, ConvertSpec(to=to, fraction=KEEP["fraction"]))
    valid = init_keys(config_class_for(to, "student"))
    kwargs = json.loads(json.dumps(plan.config_kwargs))
    dropped = sorted(k for k in kwargs if k not in valid)
    init = {"model_type": to, **{k: v for k, v in kwargs.items() if k in valid}}
    if shapes(init) != shapes({"model_type": to, **kwargs}):
        raise SystemExit(f"{to}: without {dropped} the config builds other parameters")
    return init, dropped


def shapes(init: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    params = dict(init)
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def parameter_count(init: dict[str, Any]) -> int:
    return sum(math.prod(shape) for shape in shapes(init).values())


def matched_llama(teacher_init: dict[str, Any], target: int) -> dict[str, Any]:
    """The teacher's Llama shape with the MLP width (a multiple of 8) whose count is nearest."""
    base = teacher_init["intermediate_size"]
    sizes = range(max(8, base // 2), 2 * base + 1, 8)
    best = min(
        sizes, key=lambda n: abs(parameter_count({**teacher_init, "intermediate_size": n}) - target)
    )
    return {**teacher_init, "intermediate_size": best}


def students(
    steps: int,
    align_fraction: float,
    align_lr: float,
    lr: float,
    teacher_config: Any,
    teacher_init: dict[str, Any],
    gdn: bool,
) -> dict[str, dict[str, Any]]:
    """name -> {student section, terms, stages (or None), the `start` phase to share}."""
    align = max(1, round(align_fraction * steps))

    def staged(to: str) -> dict[str, Any]:
        return {
            "student": convert_section(to),
            "terms": [MIXER, FKL],
            "stages": [
                {
                    "name": "align",
                    "steps": align,
                    "terms": ["mixer"],
                    "trainable": "mixers",
                    "lr": align_lr,
                },
                {
                    "name": "distill",
                    "steps": steps - align,
                    "terms": ["fkl"],
                    "trainable": "all",
                    "lr": lr,
                },
            ],
            "start_key": to,
        }

    hybrid, _ = converted_init(teacher_config, "bamba")
    out = {
        "hybrid_staged": staged("bamba"),
        "hybrid_kd": {"student": convert_section("bamba"), "terms": [FKL], "start_key": "bamba"},
        "hybrid_random_kd": {"student": {"init": hybrid}, "terms": [FKL]},
        "transformer_kd": {
            "student": {"init": matched_llama(teacher_init, parameter_count(hybrid))},
            "terms": [FKL],
        },
    }
    if gdn:
        out["hybrid_gdn_staged"] = staged("qwen3_5_text")
    return out


def score(run: Path, name: str, tok, held_out, n: int) -> dict[str, Any]:
    metrics = json.loads((run / "eval.json").read_text())
    model = load_pretrained(str(run / "final"), field=name, dtype=torch.float32)
    out = {
        "bits_per_byte": metrics["student/bits_per_byte"],
        "accuracy": exact_match_accuracy(model, tok, held_out[:n]),
        "params": sum(p.numel() for p in model.parameters()),
    }
    if "teacher/bits_per_byte" in metrics:
        out["teacher_bits_per_byte"] = metrics["teacher/bits_per_byte"]
    return out


def run_phase(
    ctx: dict[str, Any],
    name: str,
    phase: str,
    student: dict[str, Any],
    terms: list[dict],
    steps: int,
    lr: float,
    stages: list[dict] | None = None,
    eval_teacher: bool = False,
) -> dict[str, Any]:
    """One training run through the real `train` path, then its held-out scores."""
    s, work = ctx["settings"], ctx["work"]
    recipe = _recipe(
        s,
        work / "data",
        work / "tokenizer",
        work / f"{name}-{phase}",
        {"path": str(ctx["teacher_dir"])},
        student,
        terms,
        steps,
        lr,
        True,
        eval_teacher,
    )
    recipe["output"]["report"] = False
    if steps == 1:  # step 0: a 1e-12 step, no warmup, so the weights are as they started
        recipe["train"]["warmup_steps"] = 0
    if stages:
        recipe["stages"] = stages
        del recipe["train"]["max_steps"]  # the stages set it
        shortest = min(st["steps"] for st in stages)
        recipe["train"]["warmup_steps"] = min(recipe["train"]["warmup_steps"], shortest - 1)
    tick = time.perf_counter()
    run = train(config_from_dict(recipe))
    trained = time.perf_counter() - tick
    out = score(run, name, ctx["tok"], ctx["held_out"], ctx["n_accuracy"])
    return {**out, "steps": steps, "train_seconds": trained, "seconds": time.perf_counter() - tick}


def train_students(
    ctx: dict[str, Any], chosen: dict[str, dict[str, Any]], steps: int, lr: float
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    starts: dict[str, dict[str, Any]] = {}  # one step-0 score per conversion target
    for name, spec in chosen.items():
        tick = time.perf_counter()
        key = spec.get("start_key")
        out: dict[str, Any] = {}
        if key is not None and key in starts:
            out["start"] = {**starts[key], "shared_with": starts[key]["name"]}
            out["start"].pop("name")
        else:
            plain = [t for t in spec["terms"] if t["kind"] != "mixer"] or [FKL]
            start = run_phase(
                ctx,
                name,
                "start",
                spec["student"],
                plain,
                1,
                1e-12,
                eval_teacher="teacher_bits_per_byte" not in ctx,
            )
            if "teacher_bits_per_byte" in start:
                ctx["teacher_bits_per_byte"] = start.pop("teacher_bits_per_byte")
            out["start"] = start
            if key is not None:
                starts[key] = {**start, "name": name}
        if spec.get("stages"):  # mixer alignment alone: what the first stage buys
            align = spec["stages"][0]
            out["aligned"] = run_phase(
                ctx, name, "aligned", spec["student"], [MIXER], align["steps"], align["lr"], [align]
            )
        out["trained"] = run_phase(
            ctx, name, "trained", spec["student"], spec["terms"], steps, lr, spec.get("stages")
        )
        out["params"] = out["trained"]["params"]
        out["wall_seconds"] = time.perf_counter() - tick
        results[name] = out
        print(json.dumps({name: out}), flush=True)
    return results


# ---- generation ---------------------------------------------------------------------------


def save_random(init: dict[str, Any], positions: int, folder: Path) -> Path:
    """A random-weight model of `init` with `positions` positions, saved for bench_generate."""
    params = {**init, "max_position_embeddings": positions}
    config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(str(folder))
    return folder


def estimate(records: list[dict[str, Any]], length: int) -> float | None:
    """Seconds the case at `length` would take, by the power law (time ~ L^p, p at least 1)
    through the two longest lengths below it that were measured (wall seconds of the case:
    the tracked run and the timed ones)."""
    done = sorted((r["prompt_len"], r["case_seconds"]) for r in records if "prefill_s" in r)
    if not done:
        return None
    if len(done) == 1:
        (l1, t1) = done[0]
        return t1 * (length / l1) ** 2
    (l0, t0), (l1, t1) = done[-2:]
    p = max(1.0, math.log(t1 / t0) / math.log(l1 / l0)) if t0 > 0 and t1 > t0 else 1.0
    return t1 * (length / l1) ** p


def generation(
    work: Path,
    models: dict[str, dict[str, Any]],
    lengths: list[int],
    new_tokens: int,
    max_case_s: float,
    repeats: int,
) -> dict[str, Any]:
    positions = max(lengths) + new_tokens + 64
    settings_lengths: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for label, init in models.items():
        path = save_random(init, positions, work / "generate" / label)
        done: list[dict[str, Any]] = []
        for length in sorted(lengths):
            guess = estimate(done, length)
            if guess is not None and guess > max_case_s:
                record = {
                    "model": label,
                    "model_type": init["model_type"],
                    "prompt_len": length,
                    "skipped": f"estimated {guess:.0f} s from the shorter prompts, over "
                    f"the {max_case_s:.0f} s limit per case",
                }
            else:
                settings = GenerateSettings(
                    prompt_lens=(length,), new_tokens=new_tokens, repeats=repeats
                )
                tick = time.perf_counter()
                (record,) = bench_generate([str(path)], settings, torch.device("cpu"))
                record = {
                    **record,
                    "model": label,
                    "path": str(path),
                    "case_seconds": time.perf_counter() - tick,
                }
                if guess is not None:
                    record["estimated_seconds"] = guess
                done.append(record)
            records.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "cache_layers"}), flush=True)
        settings_lengths.append({"model": label, "params": parameter_count(init)})
    return {
        "settings": {
            "prompt_lens": lengths,
            "new_tokens": new_tokens,
            "batch": 1,
            "dtype": "float32",
            "repeats": repeats,
            "weights": "random",
            "max_position_embeddings": positions,
            "max_case_s": max_case_s,
        },
        "models": settings_lengths,
        "records": records,
    }


# ---- main ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per student")
    parser.add_argument("--lr", type=float, default=2e-3, help="KD lr (prune_demo's)")
    parser.add_argument("--align-fraction", type=float, default=0.2)
    parser.add_argument("--align-lr", type=float, default=3e-3)
    parser.add_argument("--n-accuracy", type=int, default=FULL.n_accuracy)
    parser.add_argument("--no-gdn", action="store_true", help="leave out hybrid_gdn_staged")
    parser.add_argument("--only", default=None, help="comma-separated student names")
    parser.add_argument("--prompt-lens", default="1024,4096,16384")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument(
        "--max-case-s",
        type=float,
        default=300.0,
        help="skip a generation case estimated to take longer",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per case")
    parser.add_argument("--no-generate", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="only the generation section")
    parser.add_argument(
        "--quick", action="store_true", help="20 steps, 20 problems, prompts 128,512, 4 new tokens"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.n_accuracy, args.new_tokens = 20, 20, 4
        args.prompt_lens, args.repeats = "128,512", 1
    quiet_libraries()
    torch.set_num_threads(args.threads)
    begin = time.perf_counter()
    s = FULL
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-hybrid-"))
    held_out = _write_data(s, work / "data")
    texts = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in texts], s.vocab_size)
    tok.save_pretrained(str(work / "tokenizer"))
    teacher_dir = _cached_teacher(s, work / "data", work / "tokenizer", work, True, print)
    teacher_config = AutoConfig.from_pretrained(str(teacher_dir))
    teacher_init = {
        **demo_llama_init(s.teacher_dims, s.seq_len),
        "vocab_size": teacher_config.vocab_size,
    }
    chosen = students(
        args.steps,
        args.align_fraction,
        args.align_lr,
        args.lr,
        teacher_config,
        teacher_init,
        not args.no_gdn,
    )
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    ctx = {
        "settings": s,
        "work": work,
        "teacher_dir": teacher_dir,
        "tok": tok,
        "held_out": held_out,
        "n_accuracy": args.n_accuracy,
    }
    results = train_students(ctx, chosen, args.steps, args.lr) if not args.no_train else {}
    teacher = load_pretrained(str(teacher_dir), field="teacher", dtype=torch.float32)
    training_seconds = time.perf_counter() - begin
    hybrid_init, dropped = converted_init(teacher_config, "bamba")
    hybrid_params = parameter_count(hybrid_init)
    report = {
        "date": dt.date.today().isoformat(),
        "what": "hybrid (converted Mamba-2 / Gated DeltaNet) vs random-init and Transformer "
        "students + KD at one step budget, demo task; generation cost per prompt length",
        "machine": {**machine_info(torch.device("cpu")), "torch_threads": torch.get_num_threads()},
        "settings": {
            "demo": "full",
            "objective": "fkl, T=1; staged: mixer alignment (mixers only) then fkl (all)",
            "steps": args.steps,
            "lr": args.lr,
            "align_steps": max(1, round(args.align_fraction * args.steps)),
            "align_lr": args.align_lr,
            "keep_attention": KEEP,
            "batch_size": s.batch_size,
            "n_accuracy": args.n_accuracy,
            "hybrid_params": hybrid_params,
            "hybrid_random_init": hybrid_init,
            "hybrid_random_init_dropped_keys": dropped,
            "transformer_params": parameter_count(matched_llama(teacher_init, hybrid_params)),
            "threads": args.threads,
            "quick": args.quick,
        },
        "teacher": {
            "params": sum(p.numel() for p in teacher.parameters()),
            "bits_per_byte": ctx.get("teacher_bits_per_byte"),
            "accuracy": exact_match_accuracy(teacher, tok, held_out[: args.n_accuracy]),
        },
        "results": results,
        "generation": None,
        "seconds": {"training": training_seconds},
    }
    default = RESULTS / f"{report['date']}-hybrid-demo-cpu.json"
    out_path = args.out or (work / "hybrid-demo-quick.json" if args.quick else default)
    write(out_path, report)  # the training results are kept even if generation fails
    if not args.no_generate:
        models = {
            "llama_teacher_shape": teacher_init,
            "bamba_hybrid": hybrid_init,
        }
        if not args.no_gdn:
            models["gdn_hybrid"] = converted_init(teacher_config, "qwen3_5_text")[0]
        lengths = [int(x) for x in args.prompt_lens.split(",")]
        tick = time.perf_counter()
        report["generation"] = generation(
            work, models, lengths, args.new_tokens, args.max_case_s, args.repeats
        )
        report["seconds"]["generation"] = time.perf_counter() - tick
    report["seconds"]["total"] = time.perf_counter() - begin
    write(out_path, report)


def write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()

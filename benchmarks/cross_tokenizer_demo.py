"""Cross-tokenizer distillation methods compared at equal steps, in bits per byte, on the CPU.

Data: tinyshakespeare (`/work/shared/data/tinyshakespeare/input.txt`, or `--data`), split
into blank-line separated paragraphs; the last 5% of the paragraphs (a contiguous tail of the
text, so no speech straddles the split) are held out, the rest train. Text mode, packed into
windows of `seq_len` tokens.

Teacher: a llama trained from scratch with plain CE (an anydistill run with objective
`[{kind: ce}]`) on its own byte-level BPE of 1024 tokens trained on the training text. Its
`final/` directory is cached under the user's cache dir (ANYDISTILL_CACHE, else
~/.cache/anydistill/cross-bench/), keyed by the settings and the data; `--teacher DIR`
reuses any trained one.

Students: a smaller llama with its OWN byte-level BPE of 512 tokens (`student.tokenizer:
{vocab_size: 512}`, trained by each run on the same training text; its merges are a prefix
of the teacher's, so the teacher splits the same text into fewer, longer tokens and the
chunk boundaries differ). Every student has the same seed, initial weights, batches, steps
and schedule; only the objective differs:

- `ce_only`: `[{kind: alm, weight: 0}, {kind: ce}]`. Config validation accepts a student
  tokenizer of its own only in a cross-tokenizer run, so the CE baseline carries an ALM term
  of weight 0 (computed, with no effect on the gradient: the baseline's seconds include the
  teacher's forward pass).
- `alm`: `[{kind: alm, temperature: tau, options: {debias: true}}, {kind: ce, weight: W}]`,
  the ALM paper's recipe (tau = 100, debiased chunk likelihoods);
- `alm_plain`: the same without debiasing;
- `uld`: `[{kind: uld}, {kind: ce}]` (sorted-probability Wasserstein distance);
- `gold_hybrid`: `[{kind: gold_hybrid}, {kind: ce}]`;
- `mined`: `[{kind: mined}, {kind: ce}]`;
- `alm_ce{W}_t{TAU}[_w{A}]`: more debiased ALM points from `--alm-sweep W:TAU[:A],...`
  (CE weight W, ALM temperature TAU, ALM weight A). ALM's gradient w.r.t. a chunk's
  log-likelihood is (Q - P) / (1 - Q) / tau, about |a_S - a_T| / |a_S| / tau: with tau = 100
  well under 1% of CE's gradient (1 per token), so CE weight 0.5 drowns it. The default
  sweep tries ALM alone (W = 0), W = 0.005 (the two of similar size), W = 0.05 and tau = 10.

References, not cross-tokenizer: `same_tok_ce` and `same_tok_fkl` (`[{kind: fkl},
{kind: ce}]`) are the same student on the teacher's tokenizer: how much a full-distribution
teacher signal helps this student at this budget, the most a cross method could hope for.
Their `gap_closed` is measured against `same_tok_ce`, their "chunk agreement" is the
token-level top-1 agreement (every chunk is one token) and they have no aligned bpb.

Metric: bits per byte on the held-out text, each model with its own tokenizer
(`anydistill.eval.text_bpb.text_bits_per_byte`; long paragraphs are cut at line breaks into
pieces short enough that neither tokenizer needs truncation at `seq_len`), and the run's own
`eval.json` (student and teacher bits per byte over the same aligned held-out chunks,
`chunk_agreement`). `gap_closed = (bpb_ce_only - bpb_method) / (bpb_ce_only - bpb_teacher)`:
0 is no better than CE alone, 1 reaches the teacher.

    python benchmarks/cross_tokenizer_demo.py --threads 1            # ~20 min on 2 cores
    python benchmarks/cross_tokenizer_demo.py --fast --threads 1     # a 1-2 minute check
    python benchmarks/cross_tokenizer_demo.py --steps 200 --methods ce_only,alm --alm-sweep ''

Writes benchmarks/results/<date>-cross-tokenizer-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from anydistill.cli_common import quiet_libraries
from anydistill.config import config_from_dict
from anydistill.demo.run import cache_root
from anydistill.eval.text_bpb import text_bits_per_byte
from anydistill.models.loading import load_pretrained
from anydistill.models.tokenizer import load_tokenizer
from anydistill.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path("/work/shared/data/tinyshakespeare/input.txt")
SAME_PREFIX, SAME_CE = "same_tok_", "same_tok_ce"  # students on the teacher's tokenizer
EVAL_NAME = "anydistill_teacher_run.json"  # the teacher's own CE run: eval.json + train_s


@dataclass(frozen=True)
class Settings:
    seq_len: int = 128
    teacher_vocab: int = 1024
    student_vocab: int = 512
    teacher_dims: tuple[int, int, int, int] = (128, 4, 4, 256)  # hidden, layers, heads, ffn
    student_dims: tuple[int, int, int, int] = (64, 2, 4, 128)
    teacher_steps: int = 1200
    teacher_lr: float = 2e-3
    student_steps: int = 500
    student_lr: float = 1e-3
    batch_size: int = 16
    heldout_fraction: float = 0.05
    seed: int = 0
    max_piece_bytes: int = 240  # held-out pieces for text bpb: < seq_len tokens on both sides


FULL = Settings()
FAST = Settings(
    teacher_dims=(64, 2, 4, 128),
    student_dims=(32, 2, 2, 64),
    teacher_steps=60,
    student_steps=20,
    batch_size=8,
)


def methods(alm_weight: float, alm_tau: float, sweep: list[tuple[float, float, float]]) -> dict:
    alm = {"kind": "alm", "temperature": alm_tau}
    out: dict[str, list[dict[str, Any]]] = {
        "ce_only": [{"kind": "alm", "weight": 0.0}, {"kind": "ce"}],
        "alm": [{**alm, "options": {"debias": True}}, {"kind": "ce", "weight": alm_weight}],
        "alm_plain": [alm, {"kind": "ce", "weight": alm_weight}],
        "uld": [{"kind": "uld"}, {"kind": "ce"}],
        "gold_hybrid": [{"kind": "gold_hybrid"}, {"kind": "ce"}],
        "mined": [{"kind": "mined"}, {"kind": "ce"}],
    }
    for w, tau, alm_w in sweep:
        out[f"alm_ce{w:g}_t{tau:g}" + (f"_w{alm_w:g}" if alm_w != 1.0 else "")] = [
            {"kind": "alm", "weight": alm_w, "temperature": tau, "options": {"debias": True}},
            {"kind": "ce", "weight": w},
        ]
    # References: the student shares the teacher's tokenizer (no cross term needed).
    out[SAME_CE] = [{"kind": "ce"}]
    out["same_tok_fkl"] = [{"kind": "fkl"}, {"kind": "ce"}]
    return out


def llama_init(dims: tuple[int, int, int, int], seq_len: int) -> dict[str, Any]:
    hidden, layers, heads, ffn = dims
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "intermediate_size": ffn,
        "max_position_embeddings": 2 * seq_len,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
    }


def split_pieces(text: str, max_bytes: int) -> list[str]:
    """Cut a paragraph at line breaks into pieces of at most ~max_bytes (a line is never cut)."""
    pieces, cur = [], ""
    for line in text.split("\n"):
        cand = f"{cur}\n{line}" if cur else line
        if cur and len(cand.encode("utf-8")) > max_bytes:
            pieces.append(cur)
            cand = line
        cur = cand
    if cur.strip():
        pieces.append(cur)
    return pieces


def write_data(src: Path, data_dir: Path, s: Settings) -> tuple[list[str], dict[str, int]]:
    """train.jsonl / heldout.jsonl (`text` column); returns the held-out pieces for text bpb."""
    paras = [p.strip("\n") for p in src.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    n_held = max(1, round(len(paras) * s.heldout_fraction))
    train_p, held_p = paras[:-n_held], paras[-n_held:]
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_p), ("heldout", held_p)):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in rows)
        (data_dir / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    pieces = [x for p in held_p for x in split_pieces(p, s.max_piece_bytes)]
    info = {
        "paragraphs_train": len(train_p),
        "paragraphs_heldout": len(held_p),
        "bytes_train": sum(len(p.encode("utf-8")) for p in train_p),
        "bytes_heldout": sum(len(p.encode("utf-8")) for p in held_p),
        "heldout_pieces": len(pieces),
    }
    return pieces, info


def base_recipe(s: Settings, data_dir: Path, out: Path, steps: int, lr: float) -> dict[str, Any]:
    return {
        "data": {
            "path": str(data_dir / "train.jsonl"),
            "eval_path": str(data_dir / "heldout.jsonl"),
            "mode": "text",
            "seq_len": s.seq_len,
            "packing": True,
        },
        "train": {
            "seed": s.seed,
            "max_steps": steps,
            "micro_batch_size": s.batch_size,
            "lr": lr,
            "lr_schedule": "cosine",
            "warmup_steps": max(1, steps // 20),
            "log_every": max(1, steps // 20),
            "device": "cpu",
            "progress": False,
        },
        "eval": {"every": 0, "max_batches": 1000, "batch_size": 16},
        "output": {"dir": str(out), "overwrite": True, "report": False},
    }


def teacher_dir(s: Settings, src: Path, work: Path, data_dir: Path) -> Path:
    """Train (or find cached) the CE-only teacher; returns its final/ copy."""
    fields = ("seq_len", "teacher_vocab", "teacher_dims", "teacher_steps", "teacher_lr")
    key_src = {k: v for k, v in asdict(s).items() if k in fields}
    key_src |= {"batch": s.batch_size, "seed": s.seed, "heldout": s.heldout_fraction, "v": 1}
    key_src["data"] = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_root() / "cross-bench" / f"teacher-{key}"
    if (cached / "config.json").is_file():
        print(f"teacher: cached at {cached}", flush=True)
        return cached
    print(f"teacher: training {s.teacher_steps} steps (cached afterwards)", flush=True)
    init = llama_init(s.teacher_dims, s.seq_len)
    r = base_recipe(s, data_dir, work / "teacher", s.teacher_steps, s.teacher_lr)
    r |= {
        "teacher": {"init": init, "tokenizer": {"vocab_size": s.teacher_vocab}},
        "student": {"init": init},
        "objective": {"terms": [{"kind": "ce"}]},
    }
    r["eval"]["teacher"] = False
    tick = time.perf_counter()
    run = train(config_from_dict(r))
    print(f"teacher: trained in {time.perf_counter() - tick:.0f} s", flush=True)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "final", tmp)
    train_s = time.perf_counter() - tick
    (tmp / EVAL_NAME).write_text(
        json.dumps({**json.loads((run / "eval.json").read_text()), "train_s": train_s}, indent=1)
    )
    os.replace(tmp, cached)
    return cached


def text_bpb(path: Path, pieces: list[str], s: Settings, field: str) -> dict[str, float]:
    model = load_pretrained(str(path), field=field, dtype=torch.float32)
    tok = load_tokenizer(str(path), field=field)
    return text_bits_per_byte(model, tok, pieces, max_len=s.seq_len, batch_size=16)


def run_method(
    s: Settings, work: Path, data_dir: Path, teacher: Path, name: str, terms, pieces
) -> dict[str, Any]:
    r = base_recipe(s, data_dir, work / name, s.student_steps, s.student_lr)
    student: dict[str, Any] = {"init": llama_init(s.student_dims, s.seq_len)}
    if not name.startswith(SAME_PREFIX):
        student["tokenizer"] = {"vocab_size": s.student_vocab}
    r |= {"teacher": {"path": str(teacher)}, "student": student, "objective": {"terms": terms}}
    tick = time.perf_counter()
    run = train(config_from_dict(r))
    wall = time.perf_counter() - tick
    ev = json.loads((run / "eval.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in rows if x["kind"] == "train"][-1]
    bpb = text_bpb(run / "final", pieces, s, name)
    return {
        "objective": terms,
        "heldout_bpb": bpb["bits_per_byte"],
        "heldout_bytes": bpb["bytes"],
        "heldout_tokens": bpb["tokens"],
        "aligned_student_bpb": ev.get("student/bits_per_byte"),
        "aligned_teacher_bpb": ev.get("teacher/bits_per_byte"),
        "chunk_agreement": ev.get("chunk_agreement", ev.get("top1_agreement")),
        "chunk_nll_gap": ev.get("chunk_nll_gap"),
        "eval_chunks": ev.get("eval_chunks"),
        "final_train_terms": {k: v for k, v in last.items() if k.startswith("term/")},
        "steps": last["step"],
        "loop_s": last["elapsed_s"],
        "run_wall_s": wall,
    }


def gap(ce: float, x: float, teacher: float) -> float | None:
    return (ce - x) / (ce - teacher) if ce != teacher else None


def table(results: dict[str, dict], teacher: dict[str, float]) -> str:
    head = (
        "| method | held-out bpb | gap closed | aligned bpb | gap closed (aligned) "
        "| chunk agreement | s/run |"
    )
    lines = [head, "|" + "---|" * 7]
    lines.append(
        f"| teacher | {teacher['bits_per_byte']:.4f} | 1 | "
        f"{teacher.get('aligned_bpb', float('nan')):.4f} | 1 | - | - |"
    )
    for name, r in results.items():
        g, ga = r.get("gap_closed"), r.get("gap_closed_aligned")
        al = r["aligned_student_bpb"]
        lines.append(
            f"| {name} | {r['heldout_bpb']:.4f} | {'-' if g is None else f'{g:+.3f}'} | "
            f"{'-' if al is None else f'{al:.4f}'} | {'-' if ga is None else f'{ga:+.3f}'} | "
            f"{r['chunk_agreement']:.3f} | {r['run_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def earlier(path: Path) -> dict[str, Any]:
    """What an earlier run of this script tried: its settings, table and held-out bpb."""
    old = json.loads(path.read_text())
    keep = ("mode", "student_steps", "alm_weight", "alm_tau", "alm_sweep", "teacher_given")
    return {
        "file": path.name,
        "date": old.get("date"),
        "settings": {k: old["settings"].get(k) for k in keep},
        "heldout_bpb": {k: r["heldout_bpb"] for k, r in old["results"].items()},
        "table": old.get("table"),
    }


def parse_sweep(text: str) -> list[tuple[float, float, float]]:
    """'0:100,0.5:1:4' -> [(0, 100, 1), (0.5, 1, 4)]: debiased ALM runs, each with CE weight
    W, temperature TAU and (optionally, default 1) ALM weight A, given as W:TAU[:A]."""
    out = []
    for item in filter(None, text.split(",")):
        parts = [float(x) for x in item.split(":")]
        w, tau, alm_w = (parts + [100.0, 1.0][len(parts) - 1 :])[:3]
        out.append((w, tau, alm_w))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny models, few steps: a check")
    parser.add_argument("--data", type=Path, default=DATA, help="a plain-text corpus")
    parser.add_argument("--teacher", type=Path, default=None, help="reuse a trained teacher")
    parser.add_argument("--steps", type=int, default=None, help="student steps per method")
    parser.add_argument("--alm-weight", type=float, default=0.5, help="CE weight next to ALM")
    parser.add_argument("--alm-tau", type=float, default=100.0, help="ALM temperature")
    parser.add_argument(
        "--alm-sweep",
        default="0:100,0.005:100,0.05:100,0.5:10",
        help="extra ALM runs, 'W:TAU[:A],...'",
    )
    parser.add_argument("--methods", default=None, help="comma list (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--previous",
        type=Path,
        action="append",
        default=[],
        help="an earlier result JSON (e.g. a short sweep) to keep under `earlier_runs`",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.is_file():
        print(
            f"error: {args.data} does not exist; give a plain-text corpus with --data "
            "(tinyshakespeare's input.txt)",
            file=sys.stderr,
        )
        sys.exit(2)
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = FAST if args.fast else FULL
    if args.steps:
        s = Settings(**{**asdict(s), "student_steps": args.steps})
    table_of = methods(args.alm_weight, args.alm_tau, parse_sweep(args.alm_sweep))
    names = args.methods.split(",") if args.methods else list(table_of)
    unknown = [n for n in names if n not in table_of]
    if unknown:
        print(f"error: unknown --methods {unknown}; choose from {list(table_of)}", file=sys.stderr)
        sys.exit(2)
    if "ce_only" not in names:
        names.insert(0, "ce_only")  # gap_closed is measured against it
    work = args.workdir or Path(tempfile.mkdtemp(prefix="anydistill-cross-"))
    data_dir = work / "data"
    start = time.perf_counter()
    pieces, data_info = write_data(args.data, data_dir, s)
    teacher = args.teacher or teacher_dir(s, args.data, work, data_dir)
    t_bpb = text_bpb(teacher, pieces, s, "teacher")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"{name}: {s.student_steps} steps", flush=True)
        results[name] = run_method(s, work, data_dir, teacher, name, table_of[name], pieces)
        print(json.dumps({name: results[name]}), flush=True)
    t_aligned = results["ce_only"]["aligned_teacher_bpb"]
    teacher_row = {**t_bpb, "aligned_bpb": t_aligned, "path": str(teacher)}
    if (teacher / EVAL_NAME).is_file():
        teacher_row["own_run"] = json.loads((teacher / EVAL_NAME).read_text())
    ce_al = results["ce_only"]["aligned_student_bpb"]
    for name, r in results.items():
        same = name.startswith(SAME_PREFIX)
        r["baseline"] = SAME_CE if same and SAME_CE in results else "ce_only"
        r["gap_closed"] = gap(
            results[r["baseline"]]["heldout_bpb"], r["heldout_bpb"], t_bpb["bits_per_byte"]
        )
        if same:  # its eval.json is over its own tokens, not the aligned chunks
            r["aligned_student_bpb"] = r["aligned_teacher_bpb"] = r["gap_closed_aligned"] = None
        else:
            r["gap_closed_aligned"] = gap(ce_al, r["aligned_student_bpb"], t_aligned)
    text = table(results, teacher_row)
    print(text)
    report = {
        "date": dt.date.today().isoformat(),
        "what": (
            "cross-tokenizer distillation at equal steps: held-out bits per byte, each model "
            "with its own tokenizer (tinyshakespeare)"
        ),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            **asdict(s),
            "mode": "fast" if args.fast else "full",
            "data": str(args.data),
            "data_split": data_info,
            "alm_weight": args.alm_weight,
            "alm_tau": args.alm_tau,
            "alm_sweep": args.alm_sweep,
            "teacher_given": args.teacher is not None,
        },
        "teacher": teacher_row,
        "results": results,
        "table": text,
        "earlier_runs": [earlier(p) for p in args.previous],
        "total_wall_s": time.perf_counter() - start,
    }
    out = args.out or RESULTS / f"{report['date']}-cross-tokenizer-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

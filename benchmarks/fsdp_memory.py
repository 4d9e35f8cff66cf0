"""Per-GPU memory of a distillation run under DDP and FSDP2, computed from parameter counts.

The models are built on the meta device from their public configs (bench presets), so
nothing is downloaded and no memory is used. Per GPU, training state only (activations and
the loss's blocks come on top and depend on batch and sequence length):

- student: fp32 weights, fp32 gradients, AdamW's two fp32 moments = 16 bytes per parameter;
  bf16 compute copies under `train.precision: bf16` are counted as gathered units below.
- teacher: frozen bf16 weights, 2 bytes per parameter; no gradients, no optimizer state.
- DDP: every GPU holds all of it.
- FSDP2 (`train.distributed.strategy: fsdp2`, anydistill's layout): each decoder block is a
  unit, sharded over the N GPUs; the student's root unit (embeddings, final norm, head) is
  sharded too but gathered from forward to backward; the teacher's root is kept gathered. At
  a time one student block is gathered in bf16 with its fp32 gradient, and one teacher block
  in bf16, each plus the next one prefetched.

    python benchmarks/fsdp_memory.py [--gpus 8] [--out benchmarks/results/...json]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from anydistill.bench.machine import machine_info
from anydistill.bench.presets import PRESETS

GIB = 1024**3
PAIRS = [("llama3.1-70b", "llama3.1-8b"), ("llama3.1-8b", "llama3.2-1b")]


def counts(name: str) -> dict[str, int]:
    """Total parameters, the largest decoder block's and the root unit's (the rest)."""
    cfg = dict(PRESETS[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    block = max(sum(p.numel() for p in layer.parameters()) for layer in model.model.layers)
    in_blocks = sum(p.numel() for p in model.model.layers.parameters())
    return {"total": total, "block": block, "root": total - in_blocks}


def per_gpu(teacher: dict[str, int], student: dict[str, int], gpus: int) -> dict[str, float]:
    ddp_t, ddp_s = 2 * teacher["total"], 16 * student["total"]
    shard_t = 2 * teacher["total"] / gpus + 2 * teacher["root"] + 2 * 2 * teacher["block"]
    shard_s = (
        16 * student["total"] / gpus
        + 2 * student["root"]  # root gathered in bf16 from forward to backward
        + 2 * (2 + 4) * student["block"]  # a block (and the next) gathered, its fp32 gradient
    )
    return {
        "ddp_teacher_gib": ddp_t / GIB,
        "ddp_student_gib": ddp_s / GIB,
        "ddp_total_gib": (ddp_t + ddp_s) / GIB,
        "fsdp2_teacher_gib": shard_t / GIB,
        "fsdp2_student_gib": shard_s / GIB,
        "fsdp2_total_gib": (shard_t + shard_s) / GIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for teacher, student in PAIRS:
        t, s = counts(teacher), counts(student)
        rows.append(
            {
                "teacher": teacher,
                "student": student,
                "teacher_params": t,
                "student_params": s,
                **per_gpu(t, s, args.gpus),
            }
        )
    print(f"| teacher + student | DDP per GPU | FSDP2 per GPU ({args.gpus} GPUs) |")
    print("|---|---|---|")
    for r in rows:
        print(
            f"| {r['teacher']} ({r['teacher_params']['total'] / 1e9:.1f}B) + {r['student']} "
            f"({r['student_params']['total'] / 1e9:.2f}B) | {r['ddp_total_gib']:.0f} GiB "
            f"(teacher {r['ddp_teacher_gib']:.0f} + student {r['ddp_student_gib']:.0f}) | "
            f"{r['fsdp2_total_gib']:.1f} GiB (teacher {r['fsdp2_teacher_gib']:.1f} + student "
            f"{r['fsdp2_student_gib']:.1f}) |"
        )
    if args.out is not None:
        record = {
            "benchmark": "fsdp_memory",
            "date": datetime.date.today().isoformat(),
            "machine": machine_info(torch.device("cpu")),
            "gpus": args.gpus,
            "assumptions": __doc__.split("\n\n")[1:3],
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()

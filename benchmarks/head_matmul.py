"""Two changes to the fused loss, measured side by side in one run on this machine:

- bf16 head matmuls: under bf16 autocast (`precision: bf16`, fp32 master weights) the three
  head matmuls per block take bf16 operands (`head_dtype="auto"`) instead of fp32
  (`head_dtype=None`); time, peak extra memory and error against float64;
- a frozen head (LoRA students, frozen embeddings): no dW buffer and no dW matmul; time and
  peak extra memory against a trainable head.

    python benchmarks/head_matmul.py [--device cpu|cuda] [--shape BT,V,Hs,Ht]

Writes benchmarks/results/DATE-head-matmul-DEVICE.json (records + machine) itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch

from anydistill.bench.loss import Shape, _term, make_inputs, reference
from anydistill.bench.machine import machine_info
from anydistill.bench.memory import peak_extra_bytes
from anydistill.losses.engine import TeacherSignal, distill_loss
from anydistill.models.heads import Head

RESULTS = Path(__file__).resolve().parent / "results"


def _loss(inputs, divergence: str, head_dtype, autocast: bool, train_head: bool, engine="torch"):
    hs = inputs.hs.detach().clone().requires_grad_(True)
    s_w = inputs.s_w.detach().clone().requires_grad_(train_head)
    n = hs.shape[0]
    device = hs.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        out = distill_loss(
            hs,
            Head(s_w),
            TeacherSignal(inputs.ht, Head(inputs.t_w)),
            None,
            torch.ones(n, dtype=torch.bool, device=hs.device),
            [_term(divergence)],
            vocab_size=s_w.shape[0],
            normalizer=float(n),
            engine=engine,
            head_dtype=head_dtype,
        )
        out.loss.backward()
    return out.loss.detach(), hs.grad, s_w.grad


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure(shape: Shape, divergence: str, device: torch.device, repeats: int) -> list[dict]:
    inputs = make_inputs(shape, torch.float32, device)
    ref_loss, ref_dh, ref_dw = reference(inputs, divergence)
    records = []
    variants = [
        ("fp32 head matmuls under bf16 autocast", None, True, True, "torch"),
        ("bf16 head matmuls under bf16 autocast", "auto", True, True, "torch"),
        # what plain autocast gives: full bf16 logits, then the float32 loss (naive engine)
        ("naive engine, bf16 head matmuls (plain autocast)", "auto", True, True, "naive"),
        ("trainable head, fp32", None, False, True, "torch"),
        ("frozen head, fp32", None, False, False, "torch"),
    ]
    for name, head_dtype, autocast, train_head, engine in variants:
        loss, dh, dw = _loss(inputs, divergence, head_dtype, autocast, train_head, engine)
        record = {
            "variant": name,
            "shape": str(shape),
            "divergence": divergence,
            "loss_rel_err": _rel(loss, ref_loss),
            "grad_hidden_rel_err": _rel(dh, ref_dh),
            "grad_head_rel_err": None if dw is None else _rel(dw, ref_dw),
            "head_grad": dw is not None,
        }

        def run(head_dtype=head_dtype, autocast=autocast, train_head=train_head, engine=engine):
            return _loss(inputs, divergence, head_dtype, autocast, train_head, engine)

        record["ms"] = round(_time(run, device, repeats), 2)
        record["peak_extra_bytes"] = peak_extra_bytes(run, device)
        records.append(record)
        print(json.dumps(record))
    base = {r["variant"]: r for r in records}
    for new, old in (
        ("bf16 head matmuls under bf16 autocast", "fp32 head matmuls under bf16 autocast"),
        ("frozen head, fp32", "trainable head, fp32"),
    ):
        base[new]["time_ratio"] = round(base[new]["ms"] / base[old]["ms"], 3)
        base[new]["memory_ratio"] = round(
            base[new]["peak_extra_bytes"] / base[old]["peak_extra_bytes"], 3
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", default="2048,32000,512,1024")
    parser.add_argument("--divergence", default="jsd")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    records = measure(Shape.parse(args.shape), args.divergence, device, args.repeats)
    day = dt.date.today().isoformat()
    out = RESULTS / f"{day}-head-matmul-{device.type}.json"
    payload = {
        "benchmark": "head_matmul",
        "machine": machine_info(device),
        "settings": vars(args),
        "records": records,
    }
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

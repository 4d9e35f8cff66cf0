"""`anydistill bench loss`: forward + backward time, peak extra memory and error per engine.

Each case builds random hidden states and heads of a shape (BT, V, Hs, Ht), runs one
divergence through one engine (ours, or TRL's / Liger's chunked losses when asked), and
checks loss and gradients against a float64 reference computed by our torch engine on the
same values (itself tested against an independent float64 reference in tests/).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from anydistill.bench.compare import COMPARE_ENGINES, Unsupported, compare_loss
from anydistill.bench.memory import peak_extra_bytes
from anydistill.losses.engine import Head, TeacherSignal, distill_loss
from anydistill.losses.objective import ActiveTerm

OUR_ENGINES = ("naive", "torch", "triton")
# The parameters each divergence is benchmarked with (the registry's common settings).
DIVERGENCE_TERMS = {
    "fkl": {},
    "rkl": {},
    "jsd": {"beta": 0.5},
    "tvd": {},
    "skl": {"alpha": 0.1},
    "srkl": {"alpha": 0.1},
    "taid": {"taid_t": 0.5},
}


@dataclass(frozen=True)
class Shape:
    tokens: int
    vocab: int
    student_hidden: int
    teacher_hidden: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        parts = text.split(",")
        if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--shape {text!r} must be four positive integers BT,V,Hs,Ht")
        return cls(*(int(p) for p in parts))

    def __str__(self) -> str:
        return f"{self.tokens},{self.vocab},{self.student_hidden},{self.teacher_hidden}"

    def flops(self) -> int:
        """Matmul FLOPs of forward + backward: both projections, then dX and dW."""
        bt, v, hs, ht = self.tokens, self.vocab, self.student_hidden, self.teacher_hidden
        return 2 * bt * v * (hs + ht) + 4 * bt * v * hs


@dataclass
class Inputs:
    hs: Tensor
    s_w: Tensor
    ht: Tensor
    t_w: Tensor
    labels: Tensor


def make_inputs(shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """Random rows and heads scaled so logits have std ~2, as in trained LMs."""
    g = torch.Generator().manual_seed(seed)

    def rand(*size: int, std: float = 1.0) -> Tensor:
        return (torch.randn(*size, generator=g) * std).to(device=device, dtype=dtype)

    return Inputs(
        hs=rand(shape.tokens, shape.student_hidden),
        s_w=rand(shape.vocab, shape.student_hidden, std=2 / math.sqrt(shape.student_hidden)),
        ht=rand(shape.tokens, shape.teacher_hidden),
        t_w=rand(shape.vocab, shape.teacher_hidden, std=2.5 / math.sqrt(shape.teacher_hidden)),
        labels=torch.randint(0, shape.vocab, (shape.tokens,), generator=g).to(device),
    )


def _term(divergence: str) -> ActiveTerm:
    return ActiveTerm(divergence, divergence, weight=1.0, **DIVERGENCE_TERMS[divergence])


def ours_loss(
    inputs: Inputs, divergence: str, engine: str, chunk_size: int | None = None
) -> Tensor:
    """Mean over tokens of the divergence, as TRL and Liger report it."""
    n = inputs.hs.shape[0]
    return distill_loss(
        inputs.hs,
        Head(inputs.s_w),
        TeacherSignal(inputs.ht, Head(inputs.t_w)),
        None,
        torch.ones(n, dtype=torch.bool, device=inputs.hs.device),
        [_term(divergence)],
        vocab_size=inputs.s_w.shape[0],
        normalizer=float(n),
        engine=engine,
        chunk_size=chunk_size,
    ).loss


def _loss_fn(engine: str, chunk_size: int | None) -> Callable[[Inputs, str], Tensor]:
    if engine in OUR_ENGINES:
        return lambda inputs, div: ours_loss(inputs, div, engine, chunk_size)
    return lambda inputs, div: compare_loss(
        engine, inputs.hs, inputs.s_w, inputs.ht, inputs.t_w, inputs.labels, div
    )


def _leaves(inputs: Inputs) -> Inputs:
    return Inputs(
        hs=inputs.hs.detach().clone().requires_grad_(True),
        s_w=inputs.s_w.detach().clone().requires_grad_(True),
        ht=inputs.ht,
        t_w=inputs.t_w,
        labels=inputs.labels,
    )


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference(inputs: Inputs, divergence: str) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, dX and dW in float64 (torch engine, bounded memory) on the same values."""
    ref = Inputs(
        hs=inputs.hs.detach().double().requires_grad_(True),
        s_w=inputs.s_w.detach().double().requires_grad_(True),
        ht=inputs.ht.double(),
        t_w=inputs.t_w.double(),
        labels=inputs.labels,
    )
    loss = ours_loss(ref, divergence, "torch")
    loss.backward()
    return loss.detach(), ref.hs.grad, ref.s_w.grad


def run_case(
    engine: str,
    divergence: str,
    shape: Shape,
    inputs: Inputs,
    ref: tuple[Tensor, Tensor, Tensor],
    warmup: int,
    repeats: int,
    chunk_size: int | None = None,
) -> dict[str, object]:
    """One record: timing (median of `repeats`), peak extra bytes, errors vs the reference."""
    record: dict[str, object] = {"engine": engine, "divergence": divergence, "shape": str(shape)}
    fn = _loss_fn(engine, chunk_size)
    device = inputs.hs.device

    def step() -> Inputs:
        leaves = _leaves(inputs)
        fn(leaves, divergence).backward()
        return leaves

    leaves = _leaves(inputs)
    loss = fn(leaves, divergence)
    loss.backward()
    record["loss"] = float(loss.detach())
    record["loss_rel_err"] = _rel(loss, ref[0])
    record["grad_rel_err"] = max(_rel(leaves.hs.grad, ref[1]), _rel(leaves.s_w.grad, ref[2]))
    del leaves, loss
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    record["ms"] = round(ms, 3)
    record["tflops"] = round(shape.flops() / (ms * 1e-3) / 1e12, 3)
    gc.collect()
    record["peak_extra_bytes"] = peak_extra_bytes(step, device)
    return record


def bench_loss(
    shapes: list[Shape],
    divergences: list[str],
    engines: list[str],
    device: torch.device,
    dtype: torch.dtype,
    warmup: int = 1,
    repeats: int = 3,
    chunk_size: int | None = None,
    on_record: Callable[[dict[str, object]], None] | None = None,
) -> list[dict[str, object]]:
    """Every (shape, divergence, engine) case; a failing case becomes a record with `error`."""
    unknown = [d for d in divergences if d not in DIVERGENCE_TERMS]
    if unknown:
        raise ValueError(f"--divergence {unknown[0]!r} is not one of {', '.join(DIVERGENCE_TERMS)}")
    known = (*OUR_ENGINES, *COMPARE_ENGINES)
    bad = [e for e in engines if e not in known]
    if bad:
        raise ValueError(f"engine {bad[0]!r} is not one of {', '.join(known)}")
    records = []
    for shape in shapes:
        inputs = make_inputs(shape, dtype, device)
        for divergence in divergences:
            ref = reference(inputs, divergence)
            for engine in engines:
                try:
                    record = run_case(
                        engine, divergence, shape, inputs, ref, warmup, repeats, chunk_size
                    )
                except Unsupported:
                    continue  # e.g. Liger has no TVD: nothing to compare
                except (RuntimeError, ValueError, ImportError) as err:  # OOM, compile errors
                    first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                    record = {
                        "engine": engine,
                        "divergence": divergence,
                        "shape": str(shape),
                        "error": f"{type(err).__name__}: {first}"[:300],
                    }
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                records.append(record)
                if on_record is not None:
                    on_record(record)
            del ref
    return records

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from anydistill.bench import memory
from anydistill.bench.compare import COMPARE_ENGINES, Unsupported, compare_loss
from anydistill.bench.memory import NotEnoughMemory, human_bytes, peak_extra_bytes, too_big
from anydistill.losses import registry
from anydistill.losses.engine import Head, TeacherSignal, auto_chunk_size, distill_loss
from anydistill.losses.objective import ActiveTerm

OUR_ENGINES = ("naive", "torch", "triton")
# Every registered divergence -> the settings it is benchmarked with (its `bench` field); a
# live view, so a divergence registered later is benchmarked too.
DIVERGENCE_TERMS: Mapping[str, dict[str, float]] = registry.View(
    "divergence", lambda kind: dict(kind.bench)
)
# Float32 [rows, V] blocks alive at an engine's peak, per divergence (measured with
# `peak_extra_bytes` on the CPU; the mixtures of JSD and the skewed KLs keep the most). Others
# are assumed to keep as many as the widest.
WORKING_BLOCKS = {"fkl": 10, "rkl": 11, "jsd": 18, "tvd": 11, "skl": 16, "srkl": 17, "taid": 10}


@dataclass(frozen=True)
class Shape:
    tokens: int
    vocab: int
    student_hidden: int
    teacher_hidden: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        parts = text.split(",")
        if len(parts) != 4 or not all(p.strip().isdecimal() and int(p) > 0 for p in parts):
            raise ValueError(f"--shape {text!r} must be four positive integers BT,V,Hs,Ht")
        return cls(*(int(p) for p in parts))

    def __str__(self) -> str:
        return f"{self.tokens},{self.vocab},{self.student_hidden},{self.teacher_hidden}"

    def flops(self) -> int:
        """Matmul FLOPs of forward + backward: both projections, then dX and dW."""
        bt, v, hs, ht = self.tokens, self.vocab, self.student_hidden, self.teacher_hidden
        return 2 * bt * v * (hs + ht) + 4 * bt * v * hs


def working_set_bytes(rows: int, vocab: int, divergences: list[str], itemsize: int = 4) -> int:
    """What a loss engine holds at its peak: a few [rows, V] blocks (widest divergence)."""
    widest = max(WORKING_BLOCKS.values())
    blocks = max((WORKING_BLOCKS.get(d, widest) for d in divergences), default=widest)
    return blocks * rows * vocab * itemsize


def case_bytes(
    shape: Shape,
    dtype: torch.dtype,
    device: torch.device,
    divergences: list[str],
    engine: str = "torch",
    chunk_size: int | None = None,
) -> int:
    """Peak bytes of one shape's cases: the inputs, the float64 reference (copies, dX, dW and
    its working set) or the timed engine (trainable copies, their gradients, working set)."""
    bt, v, hs, ht = shape.tokens, shape.vocab, shape.student_hidden, shape.teacher_hidden
    values = bt * (hs + ht) + v * (hs + ht)  # hidden states and heads of both models
    trained = bt * hs + v * hs  # what gets a gradient: the student's rows and head
    size = dtype.itemsize
    auto = auto_chunk_size(v, device)
    reference_peak = values * 8 + working_set_bytes(min(bt, auto), v, divergences, 8)
    rows = bt if engine == "naive" else min(bt, chunk_size or auto)
    engine_peak = 2 * trained * size + working_set_bytes(rows, v, divergences)
    return values * size + bt * 8 + trained * 8 + max(reference_peak, engine_peak)


def _check_fits(
    shapes: list[Shape],
    divergences: list[str],
    device: torch.device,
    dtype: torch.dtype,
    chunk_size: int | None,
    room: tuple[int, str],
) -> None:
    """Refuse, before anything is allocated, a shape that cannot fit even chunked."""
    for shape in shapes:
        need = case_bytes(shape, dtype, device, divergences, "torch", chunk_size)
        if need > room[0]:
            what = (
                f"--shape {shape} (inputs, weights and their gradients, plus the loss engine's "
                "working set)"
            )
            raise NotEnoughMemory(too_big(what, need, room, device, "give a smaller --shape"))


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


def _error_record(engine: str, divergence: str, shape: Shape, error: str) -> dict[str, object]:
    return {"engine": engine, "divergence": divergence, "shape": str(shape), "error": error}


def _too_big_for(
    engine: str,
    shape: Shape,
    divergence: str,
    dtype: torch.dtype,
    device: torch.device,
    room: tuple[int, str],
) -> str:
    """Why the naive engine's full [BT, V] logits cannot fit, or "" (chunked engines fit once
    `_check_fits` passed); an error record instead of an allocation the OOM killer ends."""
    if engine != "naive":
        return ""
    need = case_bytes(shape, dtype, device, [divergence], "naive")
    if need <= room[0]:
        return ""
    free, kind = room
    return f"skipped: needs about {human_bytes(need)}, more than the {human_bytes(free)} of {kind}"


def _measure(
    engine: str,
    divergence: str,
    shape: Shape,
    inputs: Inputs,
    ref: tuple[Tensor, Tensor, Tensor],
    runs: tuple[int, int],
    chunk_size: int | None,
    skip: str,
) -> dict[str, object] | None:
    """`run_case`, or an error record (`skip`, OOM, a compile error); None: unsupported."""
    if skip:
        return _error_record(engine, divergence, shape, skip)
    try:
        return run_case(engine, divergence, shape, inputs, ref, *runs, chunk_size)
    except Unsupported:
        return None
    except (RuntimeError, ValueError, ImportError) as err:  # OOM, compile errors
        text = str(err).strip()
        first = text.splitlines()[0] if text else repr(err)
        return _error_record(engine, divergence, shape, f"{type(err).__name__}: {first}"[:300])


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
    room = memory.available_bytes(device)
    _check_fits(shapes, divergences, device, dtype, chunk_size, room)
    records = []
    for shape in shapes:
        inputs = make_inputs(shape, dtype, device)
        for divergence in divergences:
            ref = reference(inputs, divergence)
            for engine in engines:
                skip = _too_big_for(engine, shape, divergence, dtype, device, room)
                record = _measure(
                    engine, divergence, shape, inputs, ref, (warmup, repeats), chunk_size, skip
                )
                if record is None:
                    continue  # e.g. Liger has no TVD: nothing to compare
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                records.append(record)
                if on_record is not None:
                    on_record(record)
            del ref
    return records

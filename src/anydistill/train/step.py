"""One optimizer step: micro-batches -> teacher signal -> student hidden -> loss -> backward.

Reduction is by the number of loss tokens in the whole step (all micro-batches, all ranks),
so gradient accumulation and DDP give the same gradient as one big batch.

A paired batch (source `paired`) carries `teacher_rows` [B] bool; with a `contrastive` term the
engine then runs twice over the same hidden states, once per half (see `split_contrastive`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from anydistill.losses.engine import LossOutput, SparseTeacher, TeacherSignal, distill_loss
from anydistill.losses.objective import split_contrastive
from anydistill.models.heads import HiddenStates, output_head


@dataclass
class StepInputs:
    """Model-facing views of one micro-batch: targets already shifted and selected."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    select: torch.Tensor  # [B, T-1] bool: which positions predict a target token
    labels: torch.Tensor  # [N] the target tokens of the selected positions
    teacher_rows: torch.Tensor | None = None  # [N] bool: token is in a teacher response


def step_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> StepInputs:
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    select = batch["loss_mask"][:, 1:].to(device)
    flags = batch.get("teacher_rows")
    rows = None
    if flags is not None:
        rows = flags.to(device)[:, None].expand_as(select)[select]
    return StepInputs(ids, mask, select, ids[:, 1:][select], rows)


def teacher_signal(
    teacher: torch.nn.Module | Any | None, inputs: StepInputs
) -> TeacherSignal | SparseTeacher | None:
    """Online: the teacher's hidden states and head; cached: its top-k rows for this batch."""
    if teacher is None:
        return None
    if not isinstance(teacher, torch.nn.Module):  # a CachedTeacher
        return teacher.signal(inputs.input_ids, inputs.attention_mask, inputs.select)
    with torch.no_grad():
        hidden = HiddenStates(teacher)(inputs.input_ids, inputs.attention_mask)
    return TeacherSignal(hidden=hidden[:, :-1][inputs.select], head=output_head(teacher))


def micro_batch_loss(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    inputs: StepInputs,
    terms: list,
    vocab_size: int,
    normalizer: torch.Tensor,
    engine: str,
    chunk_size: int | None,
    selector: Any | None = None,
) -> LossOutput:
    """`student` is the (possibly DDP-wrapped) HiddenStates module; `selector` (AdaSPEC's
    TokenSelector) restricts the loss to the rows it keeps, normalized by the kept share."""
    signal = teacher_signal(teacher, inputs)
    hidden = student(inputs.input_ids, inputs.attention_mask)
    rows = hidden[:, :-1][inputs.select]
    halves = split_contrastive(terms)
    if halves is None and selector is not None and isinstance(signal, TeacherSignal):
        keep = selector(
            rows,
            output_head(student),
            inputs.input_ids,
            inputs.attention_mask,
            inputs.select,
            signal,
        )
        normalizer = normalizer * selector.keep
        parts = [(keep, terms)]
    elif halves is None:
        ones = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        parts = [(ones, terms)]
    elif inputs.teacher_rows is None:
        raise ValueError("a contrastive term needs paired batches (source.kind paired)")
    else:
        parts = [(inputs.teacher_rows, halves[0]), (~inputs.teacher_rows, halves[1])]
    outs = [
        distill_loss(
            rows,
            output_head(student),
            signal,
            inputs.labels,
            mask,
            part_terms,
            vocab_size=vocab_size,
            normalizer=normalizer,
            engine=engine,
            chunk_size=chunk_size,
        )
        for mask, part_terms in parts
    ]
    return outs[0] if len(outs) == 1 else merge_outputs(outs)


def merge_outputs(outs: list[LossOutput]) -> LossOutput:
    """Sum the engine's outputs over disjoint row sets that share one normalizer."""

    def total(key: str, dicts: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        return sum(d[key] for d in dicts if key in d)

    terms = [o.terms for o in outs]
    stats = [o.stats for o in outs]
    return LossOutput(
        loss=sum(o.loss for o in outs),
        terms={k: total(k, terms) for k in dict.fromkeys(k for d in terms for k in d)},
        stats={k: total(k, stats) for k in dict.fromkeys(k for d in stats for k in d)},
    )


def global_token_count(
    accelerator: Accelerator, batches: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    local = sum(int(b["loss_mask"][:, 1:].sum()) for b in batches)
    count = torch.tensor(float(local), device=accelerator.device)
    return accelerator.reduce(count, reduction="sum")


@dataclass
class StepResult:
    loss: float
    terms: dict[str, float]
    stats: dict[str, float]
    tokens: int
    grad_norm: float | None


def train_step(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    batches: list[dict[str, torch.Tensor]],
    terms: list,
    vocab_size: int,
    engine: str,
    chunk_size: int | None,
    max_grad_norm: float | None,
    bf16: bool = False,
    selector: Any | None = None,
) -> StepResult:
    """Forward/backward over the step's micro-batches; the caller steps the optimizer."""
    normalizer = global_token_count(accelerator, batches)

    def micro(batch: dict[str, torch.Tensor]) -> LossOutput:
        inputs = step_inputs(batch, accelerator.device)
        return micro_batch_loss(
            student,
            teacher,
            inputs,
            terms,
            vocab_size,
            normalizer,
            engine,
            chunk_size,
            selector,
        )

    result = accumulate(accelerator, student, batches, micro, max_grad_norm, bf16)
    result.tokens = int(normalizer.item())
    return result


def accumulate(
    accelerator: Accelerator,
    student: torch.nn.Module,
    batches: list,
    micro: Callable[[Any], LossOutput],
    max_grad_norm: float | None,
    bf16: bool,
) -> StepResult:
    """Backward of `micro(batch)` for each micro-batch (gradient sync on the last only), the
    rank-summed loss, terms and stats, and the clipped gradient norm. `tokens` is left 0."""
    # DDP averages gradients over ranks; scaling by world size turns that into the global sum.
    scale = float(accelerator.num_processes)
    total = torch.zeros((), device=accelerator.device)
    term_sums: dict[str, torch.Tensor] = {}
    stat_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(student)
        autocast = torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bf16)
        with sync, autocast:
            out = micro(batch)
            accelerator.backward(out.loss * scale)
        total += out.loss.detach()
        for k, v in out.terms.items():
            term_sums[k] = term_sums.get(k, 0.0) + v
        for k, v in out.stats.items():
            stat_sums[k] = stat_sums.get(k, 0.0) + v
    keys = sorted(term_sums)
    skeys = sorted(stat_sums)
    packed = torch.stack([total, *[term_sums[k] for k in keys], *[stat_sums[k] for k in skeys]])
    packed = accelerator.reduce(packed.float(), reduction="sum").tolist()
    grad_norm = None
    if all(map(_finite, packed[: 1 + len(keys)])):
        # Measured even without clipping (an infinite limit scales by exactly 1): the run's
        # guards need it to tell a dead student from a learning one.
        limit = max_grad_norm if max_grad_norm is not None else float("inf")
        grad_norm = float(accelerator.clip_grad_norm_(student.parameters(), limit))
    return StepResult(
        loss=packed[0],
        terms=dict(zip(keys, packed[1 : 1 + len(keys)], strict=True)),
        stats=dict(zip(skeys, packed[1 + len(keys) :], strict=True)),
        tokens=0,
        grad_norm=grad_norm,
    )


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")

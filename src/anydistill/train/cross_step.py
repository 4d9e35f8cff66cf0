"""One optimizer step of a cross-tokenizer run: each model reads its own tokens.

The student and the teacher run on their own token ids of the same text; their rows meet
only through the aligned chunks (`CrossTokens`). Cross terms (alm, uld, gold_hybrid, mined)
are summed over chunks and divided by the step's number of aligned chunks (all micro-batches,
all ranks); uld, gold_hybrid and mined are multiplied by T**2 like every divergence term. A
`ce` term is hard-label cross-entropy on the student's own target tokens, divided by their
number. Both normalizers are known before the first backward, so gradient accumulation and
DDP give the gradient of one big batch.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from anydistill.data.aligned import CrossTokens
from anydistill.losses.cross import cross_loss
from anydistill.losses.engine import LossOutput, distill_loss
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import HiddenStates, output_head
from anydistill.train.step import StepResult, accumulate


def _global(accelerator: Accelerator, value: float) -> torch.Tensor:
    count = torch.tensor(float(value), device=accelerator.device)
    return accelerator.reduce(count, reduction="sum")


def cross_micro_batch(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokens: CrossTokens,
    terms: list[ActiveTerm],
    params: dict[str, dict[str, Any]],
    vocab_size: int,
    norms: tuple[torch.Tensor, torch.Tensor],
    engine: str,
    chunk_size: int | None,
) -> LossOutput:
    """Weighted terms of one micro-batch; `norms` = (global chunk count, global ce tokens)."""
    device = norms[0].device
    s_att = tokens.student_attention.to(device)
    hidden = student(tokens.student_ids.to(device), s_att.long())
    teacher_hidden = None
    # A cross term at weight 0 (a schedule's start, or a CE-only baseline) costs nothing:
    # no teacher forward, no loss; it is logged as 0.
    if any(t.kind != "ce" and t.weight > 0 for t in terms):
        t_att = tokens.teacher_attention.to(device)
        with torch.no_grad():
            teacher_hidden = HiddenStates(teacher)(tokens.teacher_ids.to(device), t_att.long())
    batch = tokens.batch(hidden, teacher_hidden)
    chunk_norm, ce_norm = (n.clamp(min=1.0) for n in norms)
    loss = hidden.new_zeros((), dtype=torch.float32)
    values: dict[str, torch.Tensor] = {}
    ce_rows = tokens.student_ce.to(device)
    for term in terms:
        if term.kind == "ce":
            rows = batch.student_hidden[ce_rows]
            out = distill_loss(
                rows,
                output_head(student),
                None,
                batch.student_targets[ce_rows],
                torch.ones(rows.shape[0], dtype=torch.bool, device=device),
                [term],
                vocab_size=vocab_size,
                normalizer=ce_norm,
                engine=engine,
                chunk_size=chunk_size,
            )
            loss = loss + out.loss
            values[term.name] = out.terms[term.name]
            continue
        if term.weight == 0:
            values[term.name] = torch.zeros((), device=device)
            continue
        total, _ = cross_loss(
            term.kind, batch, output_head(student), output_head(teacher), params[term.name]
        )
        # Hinton's T**2, as for the same-vocabulary divergences; alm's temperature is its tau.
        scale = 1.0 if term.kind == "alm" else term.temperature**2
        loss = loss + term.weight * scale * total / chunk_norm
        values[term.name] = scale * total.detach() / chunk_norm
    stats = {
        "tokens": ce_rows.sum().float(),
        "chunks": torch.tensor(float(tokens.n_chunks), device=device),
    }
    return LossOutput(loss=loss, terms=values, stats=stats)


def cross_train_step(
    accelerator: Accelerator,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batches: list[CrossTokens],
    terms: list[ActiveTerm],
    params: dict[str, dict[str, Any]],
    vocab_size: int,
    engine: str,
    chunk_size: int | None,
    max_grad_norm: float | None,
    bf16: bool = False,
) -> StepResult:
    """Forward/backward over the step's micro-batches; the caller steps the optimizer."""
    norms = (
        _global(accelerator, sum(b.n_chunks for b in batches)),
        _global(accelerator, sum(int(b.student_ce.sum()) for b in batches)),
    )

    def micro(tokens: CrossTokens) -> LossOutput:
        return cross_micro_batch(
            student, teacher, tokens, terms, params, vocab_size, norms, engine, chunk_size
        )

    result = accumulate(accelerator, student, batches, micro, max_grad_norm, bf16)
    rows = sum(int(b.student_attention.sum()) for b in batches)
    result.tokens = int(_global(accelerator, rows).item())
    return result

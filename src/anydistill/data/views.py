"""What a model sees of one micro-batch: its inputs, which positions predict a target, and,
when the teacher reads another tokenizer, the aligned teacher side.

A source yields either a padded dict (`input_ids`, `attention_mask`, `loss_mask`, and for
paired batches `teacher_rows`, for trace pairs `pair_role`), `CrossTokens` (both
tokenizations of the same texts, with their chunks) or, with several teachers on their own
tokenizers, `MultiCrossTokens` (the student's tokens once, each teacher's alignment of its
rows). `step_inputs` turns any of them into one `StepInputs`, so the training step, the
evaluators and the cache writer never ask which one they got.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anydistill.data.aligned import CrossTokens
from anydistill.data.members import MultiCrossTokens

Batch = dict[str, torch.Tensor] | CrossTokens | MultiCrossTokens


@dataclass
class StepInputs:
    """The student's view of one micro-batch: targets already shifted and selected."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] long
    select: torch.Tensor  # [B, T-1] bool: which positions predict a target token
    labels: torch.Tensor  # [N] the target tokens of the selected positions
    teacher_rows: torch.Tensor | None = None  # [N] bool: token is in a teacher response
    # The teacher's own tokens and the shared chunks (several teachers: each one's own).
    aligned: CrossTokens | MultiCrossTokens | None = None
    # Trace pairs (source `paired_traces`): each row's role, +1 a correct completion, -1 an
    # incorrect one (0 neither), and every completion's targets `[B, T-1]`. `select` then
    # holds the correct completions' only: every other term trains on those alone.
    pair_role: torch.Tensor | None = None
    pair_select: torch.Tensor | None = None
    route: torch.Tensor | None = None  # [B] long: each row's teacher (`route_by`)


def step_inputs(batch: Batch, device: torch.device) -> StepInputs:
    if isinstance(batch, CrossTokens | MultiCrossTokens):
        return _aligned_inputs(batch, device)
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    select = batch["loss_mask"][:, 1:].to(device)
    flags = batch.get("teacher_rows")
    rows = None
    if flags is not None:
        rows = flags.to(device)[:, None].expand_as(select)[select]
    role = batch.get("pair_role")
    if role is not None:
        role, every = role.to(device), select
        select = every & (role >= 0)[:, None]
        return StepInputs(
            ids, mask, select, ids[:, 1:][select], rows, pair_role=role, pair_select=every
        )
    route = batch.get("route")
    route = route.to(device) if route is not None else None
    return StepInputs(ids, mask, select, ids[:, 1:][select], rows, route=route)


def _aligned_inputs(tokens: CrossTokens | MultiCrossTokens, device: torch.device) -> StepInputs:
    # `student_ce` lists the attended positions in row-major order and marks those whose
    # next token is a target: laid back on the grid it is the dict path's loss_mask[:, 1:].
    attention = tokens.student_attention
    grid = torch.zeros_like(attention)
    grid[attention] = tokens.student_ce
    ids = tokens.student_ids.to(device)
    select = grid[:, :-1].to(device)
    route = getattr(tokens, "route", None)
    route = route.to(device) if route is not None else None
    return StepInputs(
        ids, attention.long().to(device), select, ids[:, 1:][select], aligned=tokens, route=route
    )


def target_count(batch: Batch) -> int:
    """How many positions of `batch` predict a target token (the step's token normalizer)."""
    if isinstance(batch, CrossTokens | MultiCrossTokens):
        return int(batch.student_ce.sum())
    select = batch["loss_mask"][:, 1:]
    role = batch.get("pair_role")
    if role is not None:  # trace pairs: the other terms read the correct completions only
        select = select & (role >= 0)[:, None]
    return int(select.sum())


def pair_count(batch: Batch) -> int:
    """How many correct/incorrect trace pairs `batch` holds (REDI's normalizer)."""
    role = None if isinstance(batch, CrossTokens | MultiCrossTokens) else batch.get("pair_role")
    return 0 if role is None else int((role > 0).sum())

"""Aligned terms with one teacher, and with several teachers on their own tokenizers.

`terms_loss` is the one teacher's weighted sum: each aligned term's chunk sum times Hinton's
T**2 (not alm, whose temperature is its binarisation tau), divided by the term's units over
the whole step; a zero-weight term is computed without gradient and only reported.

`members_loss` combines several teachers (`teachers:`), each scored by `terms_loss` against
its own alignment and its own vocabulary maps:

- mixture (weights): L = sum_i w_i L_i / sum_i w_i, with L_i member i's `terms_loss`, each
  term divided by member i's own units (its chunk structure: its tokenizer cuts the text into
  its own chunks). Teachers on different vocabularies cannot be mixed token by token as
  one-tokenizer teachers are (their distributions live over different outcomes, and their
  chunks differ), so the losses are mixed instead. Weights [1, 0] are the first teacher's
  loss exactly (the weight-0 member is never run; its share is never added).
- routing (`route_by`): each member scores only its rows, and the terms are summed over all
  members' chunks and divided by all members' units, so every chunk counts once whichever
  teacher taught it (as routed one-tokenizer teachers share the step's token normalizer).

Per member, `aligned/<name>/loss` (its L_i, each term over its own units) and
`aligned/<name>/<term>` are reported as stats, for every member that teaches in the run (zero
when it has no row in a micro-batch, so the keys are the same on every rank).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anydistill.data.aligned import CrossBatch
from anydistill.losses.cross import cross_loss
from anydistill.losses.engine import Head, LossOutput


def terms_loss(
    batch: CrossBatch,
    student_head: Head,
    teacher_head: Head,
    terms: Sequence[Any],
    params: Mapping[str, dict],
    counts: Mapping[str, Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """(sum_t w_t s_t total_t / count_t with gradient, {term: s_t total_t / count_t}
    detached); `terms` are `losses.objective.ActiveTerm`s of the aligned family."""
    loss = batch.student_hidden.new_zeros((), dtype=torch.float32)
    values: dict[str, Tensor] = {}
    for term in terms:
        count = counts[term.name]
        grad = contextlib.nullcontext() if term.weight > 0 else torch.no_grad()
        with grad:
            total, _ = cross_loss(term.kind, batch, student_head, teacher_head, params[term.name])
        scale = 1.0 if term.kind == "alm" else term.temperature**2
        if term.weight > 0:
            loss = loss + term.weight * scale * total / count
        values[term.name] = scale * total.detach() / count
    return loss, values


@dataclass
class MemberBatch:
    """One teacher's side of a micro-batch: its rows (`CrossBatch`), head and options."""

    index: int  # the member's place in `teachers:`
    name: str
    weight: float
    batch: CrossBatch
    teacher_head: Head
    params: Mapping[str, dict]  # per aligned term: its options and vocabulary maps


def members_loss(
    members: Sequence[MemberBatch],
    names: Sequence[str],
    total_weight: float,
    route: bool,
    student_head: Head,
    terms: Sequence[Any],
    units: Mapping[str, Tensor],
) -> LossOutput:
    """Several teachers' aligned loss (see the module doc). `names`: every member that
    teaches in the run (its stats are reported); `total_weight`: the mixture's sum of
    weights; `units[term]`: [members] the step's global units of each member."""
    zero = student_head.weight.new_zeros((), dtype=torch.float32)
    loss = zero
    values = {t.name: zero for t in terms}
    stats = {f"aligned/{n}/{key}": zero for n in names for key in ("loss", *values)}
    for m in members:
        own = {t.name: units[t.name][m.index].clamp(min=1.0) for t in terms}
        if route:
            every = {t.name: units[t.name].sum().clamp(min=1.0) for t in terms}
            part, shares = terms_loss(m.batch, student_head, m.teacher_head, terms, m.params, every)
            loss = loss + part
            values = {k: values[k] + shares[k] for k in values}
            mine = {k: shares[k] * every[k] / own[k] for k in shares}
            weighted = [t.weight * mine[t.name] for t in terms if t.weight > 0]
            stats[f"aligned/{m.name}/loss"] = sum(weighted, zero)
        else:
            part, mine = terms_loss(m.batch, student_head, m.teacher_head, terms, m.params, own)
            share = m.weight / total_weight
            loss = loss + share * part
            values = {k: values[k] + share * mine[k] for k in values}
            stats[f"aligned/{m.name}/loss"] = part.detach()
        for k, v in mine.items():
            stats[f"aligned/{m.name}/{k}"] = v
    return LossOutput(loss=loss, terms=values, stats=stats)

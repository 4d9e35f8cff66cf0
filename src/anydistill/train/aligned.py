"""The step's aligned (cross-tokenizer) terms: their normalizers and their loss.

One teacher: each term over the batch's chunks, divided by its units in the whole step
(`aligned_units`: all chunks for alm and gold_hybrid, the one-to-one chunks for uld and mined,
summed over micro-batches and ranks before any backward).

Several teachers on their own tokenizers (`teachers:`): the batch carries each member's rows
aligned to its tokenizer, so the units are counted per member ([members] per term, all-reduced
the same way), and `losses.cross.members.members_loss` mixes the members' losses (weights) or
sums each member's rows (`route_by`); see that module for the formulas.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from anydistill.data.members import MultiCrossTokens
from anydistill.data.views import Batch, StepInputs
from anydistill.errors import TrainingError
from anydistill.losses import registry
from anydistill.losses.engine import LossOutput
from anydistill.losses.objective import ActiveTerm
from anydistill.models.heads import output_head
from anydistill.teachers import AlignedSignal
from anydistill.teachers.multi_aligned import AlignedMembers


def _is_aligned(kind: str) -> bool:
    return registry.get(kind).family == "cross"


def aligned_units(
    accelerator: Accelerator, batches: list[Batch], terms: list
) -> dict[str, torch.Tensor]:
    """Per aligned term: how many units its sum runs over in the whole step (all chunks for
    alm and gold_hybrid, the one-to-one chunks for uld and mined); with several teachers on
    their own tokenizers, a [members] vector: each member's units over the rows it teaches."""
    from anydistill.losses.cross import term_units

    out = {}
    for term in terms:
        if not _is_aligned(term.kind):
            continue
        if batches and isinstance(batches[0], MultiCrossTokens):
            per_member = [0.0] * len(batches[0].members)
            for b in batches:
                for k, part in enumerate(b.members):
                    if part is not None:
                        per_member[k] += term_units(term.kind, part.tokens)
            local = torch.tensor(per_member, device=accelerator.device)
        else:
            count = sum(term_units(term.kind, b) for b in batches)
            local = torch.tensor(float(count), device=accelerator.device)
        out[term.name] = accelerator.reduce(local, reduction="sum")
    return out


def aligned_loss(
    student: torch.nn.Module,
    hidden: torch.Tensor,
    signal: AlignedSignal | AlignedMembers | None,
    inputs: StepInputs,
    terms: list[ActiveTerm],
    params: dict[str, dict] | None,
    units: dict[str, torch.Tensor] | None,
) -> LossOutput:
    """Aligned terms over the batch's chunks, each divided by its global units. Hinton's
    T**2 scales uld, gold_hybrid and mined as it does the divergences; alm's temperature is
    its binarisation tau. A zero-weight term is computed without gradient and logged."""
    from anydistill.losses.cross.members import terms_loss

    if isinstance(signal, AlignedMembers):
        return _members(student, hidden, signal, terms, units)
    if not isinstance(signal, AlignedSignal) or inputs.aligned is None:
        raise TrainingError(
            f"term {terms[0].name!r} ({terms[0].kind}) compares two tokenizers; it needs a "
            "teacher on its own tokenizer and data through the align stage"
        )
    batch = inputs.aligned.batch(hidden, signal.hidden)
    one = torch.ones((), device=hidden.device)
    counts = {t.name: units[t.name].clamp(min=1.0) if units else one for t in terms}
    loss, values = terms_loss(batch, output_head(student), signal.head, terms, params or {}, counts)
    chunks = torch.tensor(float(inputs.aligned.n_chunks), device=hidden.device)
    return LossOutput(loss=loss, terms=values, stats={"chunks": chunks})


def _members(
    student: torch.nn.Module,
    hidden: torch.Tensor,
    signal: AlignedMembers,
    terms: list[ActiveTerm],
    units: dict[str, torch.Tensor] | None,
) -> LossOutput:
    """Several teachers: each member's `CrossBatch` from the student rows it teaches."""
    from anydistill.losses.cross.members import MemberBatch, members_loss

    if units is None:
        raise TrainingError("several aligned teachers need the step's units per teacher")
    parts = [
        MemberBatch(
            index=m.index,
            name=m.name,
            weight=m.weight,
            batch=m.part.tokens.batch(m.part.student_hidden(hidden), m.signal.hidden),
            teacher_head=m.signal.head,
            params=m.params,
        )
        for m in signal.members
    ]
    head = output_head(student)
    return members_loss(parts, signal.names, signal.total_weight, signal.route, head, terms, units)

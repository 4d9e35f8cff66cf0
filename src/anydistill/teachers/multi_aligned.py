"""Several teachers on their own tokenizers: what each says about one micro-batch.

A cross-tokenizer batch with several teachers (`data.members.MultiCrossTokens`) carries, per
member, the rows it teaches aligned to that member's own tokenizer. `aligned_signal` asks each
member that teaches rows of the batch (an `AlignedTeacher`: its model on its own ids) and
returns `AlignedMembers`: per member its rows, its `AlignedSignal` and the aligned terms'
options for its tokenizer pair (`Member.params`, vocabulary maps included). A weight-0 member
of a mixture is never asked (it has no alignment at all); under `route_by`, a member with no
row in the batch is not asked either. The step scores them with `losses.cross.members`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from anydistill.data.members import MemberTokens, MultiCrossTokens
from anydistill.data.views import StepInputs, step_inputs
from anydistill.errors import TrainingError
from anydistill.teachers.aligned import AlignedSignal
from anydistill.teachers.base import Needs


@dataclass
class MemberSignal:
    """One member's answer on the rows it teaches."""

    index: int
    name: str
    weight: float
    part: MemberTokens  # its rows of the batch, aligned to its tokenizer
    signal: AlignedSignal
    params: Mapping[str, dict]  # per aligned term name


@dataclass
class AlignedMembers:
    """Several teachers' answers: `names` every member that teaches in this run (a mixture's
    weight > 0 members, or every routed member), `members` those with rows in this batch."""

    names: tuple[str, ...]
    total_weight: float
    route: bool
    members: tuple[MemberSignal, ...]


def aligned_signal(teacher: Any, inputs: StepInputs, needs: Needs) -> AlignedMembers:
    """`teacher` is a `teachers.multi.MultiTeacher` whose batch came aligned to each member."""
    tokens = inputs.aligned
    assert isinstance(tokens, MultiCrossTokens)
    if len(tokens.members) != len(teacher.members):
        raise TrainingError(
            f"teachers: the batch is aligned to {len(tokens.members)} teachers but the run has "
            f"{len(teacher.members)}"
        )
    device = inputs.input_ids.device
    out = []
    for i, (member, part) in enumerate(zip(teacher.members, tokens.members, strict=True)):
        if part is None or (not teacher.route and member.weight == 0):
            continue
        signal = member.teacher.signal(step_inputs(part.tokens, device), needs)
        if not isinstance(signal, AlignedSignal):
            raise TrainingError(
                f"teachers.{i} ({member.name}): cross-tokenizer terms need a teacher model "
                "reading its own tokenizer"
            )
        out.append(MemberSignal(i, member.name, member.weight, part, signal, member.params))
    teaching = [m for m in teacher.members if teacher.route or m.weight > 0]
    return AlignedMembers(
        names=tuple(m.name for m in teaching),
        total_weight=sum(m.weight for m in teaching),
        route=teacher.route,
        members=tuple(out),
    )

"""A teacher model that reads its own tokenizer's ids (`kind = "aligned"`).

The student and the teacher tokenize the same text differently; the data path aligned both
into chunks that spell the same bytes (`data.aligned.CrossTokens`). This teacher runs on its
own ids and hands back its hidden rows; the step meets them with the student's rows through
the chunks (`CrossTokens.batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anydistill.data.views import StepInputs
from anydistill.errors import TrainingError
from anydistill.models.heads import Head, HiddenStates, output_head
from anydistill.teachers.base import NO_EXTRAS, Needs


@dataclass
class AlignedSignal:
    """The teacher's final hidden states over its own attended tokens, and its head."""

    hidden: torch.Tensor  # [Nt, Ht], the rows of CrossTokens' teacher side
    head: Head


class AlignedTeacher:
    kind = "aligned"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> AlignedSignal:
        tokens = inputs.aligned
        if tokens is None:
            raise TrainingError(
                "an aligned (cross-tokenizer) teacher got a batch with no alignment; its data "
                "must come through the align stage"
            )
        if needs.hidden_layers or needs.attention_layers:
            raise TrainingError(
                "layer features need the teacher to read the student's tokens; this teacher "
                "reads its own tokenizer"
            )
        device = inputs.input_ids.device
        attention = tokens.teacher_attention.to(device)
        hidden = HiddenStates(self.model)(tokens.teacher_ids.to(device), attention.long())
        return AlignedSignal(hidden=hidden[attention], head=output_head(self.model))

"""A teacher model in this process, reading the student's tokens (`kind = "live"`)."""

from __future__ import annotations

import torch

from anydistill.data.views import StepInputs
from anydistill.losses.engine import TeacherSignal
from anydistill.models.features import capture, select_rows
from anydistill.models.heads import output_head, unwrap
from anydistill.teachers.base import NO_EXTRAS, Features, Needs


class LiveTeacher:
    kind = "live"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> TeacherSignal:
        """Final hidden states at the selected rows and the head; the requested layers'
        activations at the same rows in `signal.features`."""
        hidden, features = forward_rows(self.model, inputs, needs)
        return TeacherSignal(hidden=hidden, head=output_head(self.model), features=features)


def forward_rows(
    model: torch.nn.Module, inputs: StepInputs, needs: Needs = NO_EXTRAS
) -> tuple[torch.Tensor, Features | None]:
    """One decoder forward: final hidden rows [N, H], plus the layer activations `needs`
    lists (rows selected the same way), or None when it lists none."""
    base = unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.base_model
    with capture(base, needs, "teacher") as features:
        out = decoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False
        )
    final = out.last_hidden_state[:, :-1][inputs.select]
    return final, (select_rows(features, inputs.select) if needs else None)

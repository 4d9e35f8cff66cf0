"""The `mixer` term (mixer alignment): a converted student's mixers taught layer by layer.

Each layer the conversion replaced runs its new mixer on the teacher's own input to that
layer's attention, and is scored by the squared error to the teacher's attention output
(`models.convert.mixer_token_errors`). Only the mixers run: neither model's head, nor the
student's other layers, so this stage costs a teacher forward and one mixer per layer.

Normalization, as every term's: summed over the batch's real tokens (mean over the hidden
width), divided by the step's global target tokens and by the number of converted layers, so
gradient accumulation gives the gradient of one big batch.
"""

from __future__ import annotations

import torch

from anydistill.models.convert import capture_attention_io, mixer_token_errors
from anydistill.models.convert.align import mixer_of
from anydistill.models.heads import unwrap


def converted_layers(student: torch.nn.Module) -> list[int]:
    """The student's layers whose attention became a mixer."""
    lm = unwrap(student)
    return [i for i in range(len(lm.model.layers)) if mixer_of(lm, i) is not None]


def mixer_loss(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    normalizer: torch.Tensor,
) -> torch.Tensor:
    """The mixer term's value on one micro-batch (see the module docstring)."""
    layers = converted_layers(student)
    if not layers:
        raise ValueError("the `mixer` term needs a student converted from the teacher")
    captured = capture_attention_io(unwrap(teacher), input_ids, attention_mask, layers)
    errors = mixer_token_errors(unwrap(student), captured, attention_mask)
    mask = attention_mask.to(torch.float32)
    total = sum((err * mask.to(err.device)).sum() for err in errors.values())
    return total / (len(errors) * normalizer)

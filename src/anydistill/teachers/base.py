"""The teacher seam: what the teacher says about one micro-batch.

A teacher kind turns `StepInputs` into the signal the objective's terms asked for (`Needs`):

- `live` (`LiveTeacher`): a model on the student's tokens -> `TeacherSignal` (final hidden
  rows + output head; plus, on request, hidden states or attention outputs of chosen layers);
- `cache` (`teachers.cache.CachedTeacher`): the offline top-k cache -> `SparseTeacher`;
- `aligned` (`AlignedTeacher`): a model on its own tokenizer's ids -> `AlignedSignal`, which
  the step pairs with the student's rows through the batch's chunks.

A new kind (a server, several teachers at once) is a class with `kind`, `model` and
`signal(inputs, needs)`; the step does not change. Which term kinds a teacher kind can serve
is the term registry's business (`losses.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from anydistill.data.views import StepInputs


@dataclass(frozen=True)
class Needs:
    """What this step's terms ask of the teacher beyond its distribution."""

    hidden_layers: tuple[int, ...] = ()  # outputs of these decoder layers (0-based)
    attention_layers: tuple[int, ...] = ()  # the self-attention outputs of these layers


NO_EXTRAS = Needs()


@dataclass
class Features:
    """Per-layer activations at the selected rows: {layer: [N, H]}."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)


class Teacher(Protocol):
    """One kind of teacher. `model` is the module behind it (None for a cache)."""

    kind: str
    model: torch.nn.Module | None

    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> Any: ...

"""The teacher seam: what the teacher says about one micro-batch.

A teacher kind turns `StepInputs` into the signal the objective's terms asked for (`Needs`):

- `live` (`LiveTeacher`): a model on the student's tokens -> `TeacherSignal` (final hidden
  rows + output head; plus, on request, hidden states or attention outputs of chosen layers);
- `cache` (`teachers.cache.CachedTeacher`): the offline top-k cache -> `SparseTeacher`;
- `server` (`teachers.server.ServerTeacher`): a model served by vLLM, its top-k log-probs
  asked for over HTTP -> `SparseTeacher`; it also has `prefetch(batches)`, which the loop
  calls with micro-batches before they are trained on (a kind may have it or not);
- `aligned` (`AlignedTeacher`): a model on its own tokenizer's ids -> `AlignedSignal`, which
  the step pairs with the student's rows through the batch's chunks.

A new kind (a server, several teachers at once) is a class with `kind`, `model` and
`signal(inputs, needs)`; the step does not change. Which term kinds a teacher kind can serve
is the term registry's business (`losses.registry`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from anydistill.data.views import StepInputs
from anydistill.models.features import NO_EXTRAS, Features, Needs

__all__ = ["NO_EXTRAS", "Features", "Needs", "Teacher"]


class Teacher(Protocol):
    """One kind of teacher. `model` is the module behind it (None for a cache)."""

    kind: str
    model: torch.nn.Module | None

    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> Any: ...

"""Paired responses for DistiLLM-2's contrastive term: per prompt, a teacher response and a
response of the current student, in one batch.

Ko et al. 2025, "DistiLLM-2: A Contrastive Approach Boosts the Distillation of LLMs". A
micro-batch of B prompts becomes 2B rows: rows [0, B) are teacher responses (sampled from
the teacher on the fly, taken from the upfront generations, or — `off_policy: dataset` — the
dataset's own completions), rows [B, 2B) the student's, same prompts in the same order;
`teacher_rows` [2B] bool says which is which. The paper samples student responses once per
epoch; here they come from the student of the current step.
"""

from __future__ import annotations

import torch

from anydistill.data import BatchStream
from anydistill.sources.base import Batch, Source
from anydistill.sources.completer import Completer


class PairedSource(Source):
    kind = "paired"

    def __init__(
        self,
        stream: BatchStream,
        pad_id: int,
        student: Completer,
        teacher: Completer | None,
        rank: int,
    ) -> None:
        """`teacher` None: the stream's own completions are the teacher responses."""
        super().__init__(stream, pad_id, [student] + ([teacher] if teacher is not None else []))
        self.student = student
        self.teacher = teacher
        self.rank = rank

    def micro_batch(self, step: int, index: int) -> Batch:
        examples = self.stream.next_batch()
        key = (step, index, self.rank)
        positive = self.teacher.complete(examples, *key) if self.teacher else examples
        negative = self.student.complete(examples, *key)
        batch = self.collate(positive + negative)
        flags = [True] * len(positive) + [False] * len(negative)
        batch["teacher_rows"] = torch.tensor(flags, dtype=torch.bool)
        return batch

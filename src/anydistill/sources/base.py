"""The interface every source implements, and the two plain ones.

A source owns a `BatchStream` (dataset examples, or the teacher's upfront generations) and
turns each micro-batch of it into a collated batch: as is (`Source`) or with fresh
completions (`GeneratedSource`). The stream advances once per micro-batch whatever the
source does with it, so its position plus the source's own state is an exact resume point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from anydistill.data import BatchStream, collate
from anydistill.data.tokenize import Example
from anydistill.sources.completer import Completer

Batch = dict[str, torch.Tensor]


class Source:
    """Dataset micro-batches; subclasses override `micro_batch` and their state."""

    kind = "dataset"

    def __init__(
        self,
        stream: BatchStream,
        pad_id: int,
        completers: list[Completer],
        collator: Callable[[list], Any] | None = None,
    ) -> None:
        self.stream = stream
        self.pad_id = pad_id
        self.completers = completers
        self.collator = collator  # aligned examples bring their own (data.aligned)
        self.upfront_s = 0.0  # seconds spent on upfront generation in this process
        self._reported = 0.0

    def batches(self, step: int, count: int) -> list[Batch]:
        """The `count` micro-batches of optimizer step `step` (0-based)."""
        return [self.micro_batch(step, i) for i in range(count)]

    def micro_batch(self, step: int, index: int) -> Batch:
        return self.collate(self.stream.next_batch())

    def peek(self, count: int) -> list[Batch] | None:
        """The next `count` micro-batches without taking them (the stream does not move), or
        None where they depend on what happens before they are taken: a source that makes
        its own micro-batches (generated completions, mixtures, pairs) is never peeked."""
        own = type(self).micro_batch is not Source.micro_batch or (
            type(self).batches is not Source.batches
        )
        if own:
            return None
        return [self.collate(examples) for examples in self.stream.peek(count)]

    def collate(self, examples: list[Example]) -> Batch:
        if self.collator is not None:
            return self.collator(examples)
        return collate(examples, self.pad_id)

    def gen_seconds(self) -> float:
        """Seconds spent generating during training so far (upfront generation excluded)."""
        return sum(c.seconds for c in self.completers)

    def take_metrics(self) -> dict[str, float]:
        """For a metrics row: `gen_s`, the generation seconds since the last call, plus
        source-specific numbers over the same micro-batches."""
        total = self.gen_seconds()
        gen, self._reported = total - self._reported, total
        return {"gen_s": gen}

    def observe_eval(self, metrics: dict[str, float]) -> None:
        """Called with every periodic evaluation's metrics (adaptive sources react)."""

    def state_dict(self) -> dict[str, Any]:
        """Source state beyond the stream position (plain JSON); empty for most sources."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


class GeneratedSource(Source):
    """Every micro-batch's prompts completed by one model: the teacher (seq-KD on the fly)
    or the current student (on-policy, GKD with lambda = 1)."""

    def __init__(self, stream: BatchStream, pad_id: int, completer: Completer, rank: int) -> None:
        super().__init__(stream, pad_id, [completer])
        self.kind = f"{completer.role}_generated"
        self.completer = completer
        self.rank = rank

    def micro_batch(self, step: int, index: int) -> Batch:
        examples = self.stream.next_batch()
        return self.collate(self.completer.complete(examples, step, index, self.rank))

    def take_metrics(self) -> dict[str, float]:
        share = 1.0 if self.completer.role == "student" else 0.0
        return {**super().take_metrics(), "student_frac": share}

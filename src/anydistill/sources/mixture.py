"""GKD's mixture: per micro-batch, the student's own completions with probability lambda.

Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes" (ICLR): with probability `lambda` a batch is sampled from the
current student (on-policy); otherwise it is off-policy — the dataset's completions, or the
teacher's (generated on the fly, or the upfront generations the stream already holds). The
coin is a seeded `SourceRng` shared by all ranks (same seed), and its state is checkpointed.
"""

from __future__ import annotations

from typing import Any

from anydistill.data import BatchStream
from anydistill.sources.base import Batch, Source
from anydistill.sources.completer import Completer
from anydistill.sources.rng import SourceRng


class LambdaSampler:
    """The per-batch coin: True (use the student) with probability `lam`."""

    def __init__(self, lam: float, seed: int) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {lam}")
        self.lam = lam
        self.rng = SourceRng(seed)

    def draw(self) -> bool:
        return self.rng.coin(self.lam)

    def state_dict(self) -> dict[str, Any]:
        return self.rng.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.load_state_dict(state)


class MixtureSource(Source):
    kind = "mixture"

    def __init__(
        self,
        stream: BatchStream,
        pad_id: int,
        student: Completer,
        off_policy: Completer | None,
        sampler: LambdaSampler,
        rank: int,
    ) -> None:
        """`off_policy` None: the stream's examples are the off-policy batches as they are."""
        completers = [student] + ([off_policy] if off_policy is not None else [])
        super().__init__(stream, pad_id, completers)
        self.student = student
        self.off_policy = off_policy
        self.sampler = sampler
        self.rank = rank
        self._drawn = self._on_policy = 0

    def micro_batch(self, step: int, index: int) -> Batch:
        examples = self.stream.next_batch()
        self._drawn += 1
        if self.sampler.draw():
            self._on_policy += 1
            return self.collate(self.student.complete(examples, step, index, self.rank))
        if self.off_policy is not None:
            return self.collate(self.off_policy.complete(examples, step, index, self.rank))
        return self.collate(examples)

    def take_metrics(self) -> dict[str, float]:
        share = self._on_policy / self._drawn if self._drawn else 0.0
        self._drawn = self._on_policy = 0
        return {**super().take_metrics(), "student_frac": share}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["rng"])

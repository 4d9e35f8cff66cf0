"""The source of a cross-tokenizer run: dataset examples aligned for both tokenizers."""

from __future__ import annotations

from anydistill.data import BatchStream
from anydistill.data.aligned import CrossExample, CrossTokens, collate_cross
from anydistill.sources.base import Source


class CrossSource(Source):
    """Micro-batches of aligned examples, collated into `CrossTokens` (no padding id: the
    attention masks say where each side's tokens end)."""

    kind = "dataset"

    def __init__(self, stream: BatchStream, teacher_vocab: int, student_vocab: int) -> None:
        super().__init__(stream, pad_id=0, completers=[])
        self.vocabs = (teacher_vocab, student_vocab)

    def collate(self, examples: list[CrossExample]) -> CrossTokens:  # type: ignore[override]
        return collate_cross(examples, *self.vocabs)

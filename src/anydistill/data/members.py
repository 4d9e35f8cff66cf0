"""Several teachers on their own tokenizers: one student sequence aligned to each teacher.

`MultiCrossExample` holds the student's tokens once and, per member of `teachers:`, that
teacher's alignment of the same text: a `CrossExample` whose student side is these very
tokens (its chunk ids are the ones of that teacher's tokenizer), or None where the member
does not teach the sample (a weight-0 member of a mixture; under `route_by`, every teacher
but the sample's own). Members that read one tokenizer share the same alignment objects.

`collate_members` (reached through `collate_cross`, so the run's aligned collator needs no
change) stacks a batch: the student side once (`MultiCrossTokens`) and, per member, the
`CrossTokens` of the rows it teaches (`MemberTokens`), collated from its own alignments, so
its chunk ids, teacher ids and vocabulary are its own. Each member's student side is the
same tokens as the batch's rows `rows`, so its flat student rows are the batch's hidden
states at those rows (`MemberTokens.student_hidden`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from anydistill.data.aligned import CrossExample, CrossTokens, _pad, collate_cross


@dataclass
class MultiCrossExample:
    """One student sequence, aligned to each member's tokenizer (None: not taught by it)."""

    student_ids: np.ndarray  # [Ts] int64
    student_target: np.ndarray  # [Ts] bool: what a `ce` term trains on
    alignments: tuple[CrossExample | None, ...]  # per member
    teacher_vocabs: tuple[int, ...]  # per member: its tokenizer's ids
    route: int | None = None  # `route_by`: the member teaching this sample

    def _distinct(self) -> list[CrossExample]:
        seen: dict[int, CrossExample] = {}
        for al in self.alignments:
            if al is not None:
                seen.setdefault(id(al), al)
        return list(seen.values())

    def _cat(self, name: str) -> np.ndarray:
        parts = [getattr(al, name) for al in self._distinct()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    # What the data fingerprint (`train.resume.data_fingerprint`) reads of an aligned example:
    # every distinct alignment's arrays, laid end to end.
    @property
    def teacher_ids(self) -> np.ndarray:
        return self._cat("teacher_ids")

    @property
    def teacher_chunk(self) -> np.ndarray:
        return self._cat("teacher_chunk")

    @property
    def student_chunk(self) -> np.ndarray:
        return self._cat("student_chunk")


@dataclass
class MemberTokens:
    """The rows of a batch one member teaches, aligned to its own tokenizer."""

    rows: Tensor  # [b] long: indices into the batch's rows, increasing
    tokens: CrossTokens  # those rows only, collated from the member's alignments
    every_row: bool = False  # rows is the whole batch, in order

    def student_hidden(self, hidden: Tensor) -> Tensor:
        """The member's flat student rows from the batch's padded [B, L, H] hidden states."""
        picked = hidden if self.every_row else hidden.index_select(0, self.rows.to(hidden.device))
        width = self.tokens.student_attention.shape[1]
        return picked[:, :width][self.tokens.student_attention.to(hidden.device)]


@dataclass
class MultiCrossTokens:
    """A batch of `MultiCrossExample`s: the student side once, each member's side alone."""

    student_ids: Tensor  # [B, L]
    student_attention: Tensor  # [B, L] bool
    student_ce: Tensor  # [N] bool over the attended positions, row-major
    members: tuple[MemberTokens | None, ...]  # per member; None: no row taught by it
    route: Tensor | None = None  # [B] long under `route_by`


def collate_members(
    examples: Sequence[MultiCrossExample], student_vocab: int, max_len: int | None = None
) -> MultiCrossTokens:
    """Stack examples (see the module doc); each side cut to `max_len` as `collate_cross`
    cuts it. Members reading one tokenizer over the same rows share one `CrossTokens`."""
    seqs = [torch.from_numpy(ex.student_ids[:max_len]) for ex in examples]
    ids, attention = _pad(seqs)
    ce_rows = []
    for ex, seq in zip(examples, seqs, strict=True):
        target = torch.from_numpy(ex.student_target[: len(seq)])
        ce = torch.zeros(len(seq), dtype=torch.bool)
        ce[:-1] = target[1:]
        ce_rows.append(ce)
    ce_all = torch.cat(ce_rows) if ce_rows else torch.zeros(0, dtype=torch.bool)
    count = len(examples[0].alignments) if examples else 0
    made: dict[tuple, MemberTokens] = {}
    members: list[MemberTokens | None] = []
    for k in range(count):
        rows = [i for i, ex in enumerate(examples) if ex.alignments[k] is not None]
        if not rows:
            members.append(None)
            continue
        own = [examples[i].alignments[k] for i in rows]
        vocab = examples[rows[0]].teacher_vocabs[k]
        key = (vocab, *(id(al) for al in own))
        if key not in made:
            tokens = collate_cross(own, vocab, student_vocab, max_len)  # type: ignore[arg-type]
            made[key] = MemberTokens(torch.tensor(rows), tokens, len(rows) == len(examples))
        members.append(made[key])
    routes = [ex.route for ex in examples]
    route = None if any(r is None for r in routes) else torch.tensor(routes, dtype=torch.long)
    return MultiCrossTokens(ids, attention, ce_all, tuple(members), route)

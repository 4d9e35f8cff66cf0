"""The rows and chunks a cross-tokenizer loss consumes, and the helper that builds them.

Each side keeps its own token sequence: one row per token position, pairs laid end to end.
Row r predicts `targets[r]` (the next token; -100 where there is none) and carries the chunk
id of that target token (`chunk[r]`, -1 when the target is in no usable chunk). Chunk ids are
global: pair k owns ids chunk_offsets[k]:chunk_offsets[k+1]. A chunk is usable when every one
of its tokens, on both sides, is predicted by a row (so the first token of a sequence and
tokens cut off by max_len make their chunks unusable). Terms also skip a chunk with no row on
one side, or with a row whose target is -100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anydistill.align.chunks import align_texts
from anydistill.align.token_bytes import token_view

IGNORE = -100


@dataclass
class CrossBatch:
    """Student and teacher rows of a batch of text pairs, with their chunk ids.

    `teacher_hidden` is needed when the teacher comes as a `Head`; a teacher given as log-probs
    [Nt, V_t] needs none. Offsets are [pairs + 1] row / chunk ranges per pair; `None` means
    one pair. Vocabulary sizes default to the heads' row counts (or the log-probs' width).
    """

    student_hidden: Tensor  # [Ns, Hs]
    student_targets: Tensor  # [Ns] long
    student_chunk: Tensor  # [Ns] long
    teacher_targets: Tensor  # [Nt] long
    teacher_chunk: Tensor  # [Nt] long
    n_chunks: int
    teacher_hidden: Tensor | None = None  # [Nt, Ht]
    student_offsets: Tensor | None = None  # [pairs + 1]
    teacher_offsets: Tensor | None = None  # [pairs + 1]
    chunk_offsets: Tensor | None = None  # [pairs + 1]
    student_vocab: int | None = None
    teacher_vocab: int | None = None

    def validate(self) -> None:
        """Raise ValueError on inconsistent shapes or chunk ids out of range."""
        ns, nt = self.student_hidden.shape[0], self.teacher_targets.shape[0]
        checks = [
            (self.student_hidden.dim() == 2, "student_hidden must be [Ns, Hs]"),
            (self.student_targets.shape == (ns,), f"student_targets must be [{ns}]"),
            (self.student_chunk.shape == (ns,), f"student_chunk must be [{ns}]"),
            (self.teacher_chunk.shape == (nt,), f"teacher_chunk must be [{nt}]"),
        ]
        if self.teacher_hidden is not None:
            ok = self.teacher_hidden.dim() == 2 and self.teacher_hidden.shape[0] == nt
            checks.append((ok, f"teacher_hidden must be [{nt}, Ht]"))
        for chunk in (self.student_chunk, self.teacher_chunk):
            if chunk.numel():
                ok = int(chunk.min()) >= -1 and int(chunk.max()) < self.n_chunks
                checks.append((ok, f"chunk ids must lie in -1..{self.n_chunks - 1}"))
        for name, off, total in (
            ("student_offsets", self.student_offsets, ns),
            ("teacher_offsets", self.teacher_offsets, nt),
            ("chunk_offsets", self.chunk_offsets, self.n_chunks),
        ):
            if off is not None:
                ok = off.dim() == 1 and int(off[0]) == 0 and int(off[-1]) == total
                checks.append((ok, f"{name} must run from 0 to {total}"))
        for ok, why in checks:
            if not ok:
                raise ValueError(f"CrossBatch: {why}")


@dataclass
class CrossExample:
    """One sequence on both sides, aligned: ids, chunk id per token, and per-chunk facts.

    Chunk ids are local (0..n_chunks-1, non-decreasing, -1 for a token in no chunk: specials
    without a counterpart, or text outside the loss such as a prompt). `chunk_bytes` is each
    chunk's UTF-8 length; `student_target` marks the student tokens a `ce` term trains on.
    """

    teacher_ids: np.ndarray  # [Tt] int64
    student_ids: np.ndarray  # [Ts] int64
    teacher_chunk: np.ndarray  # [Tt] int64
    student_chunk: np.ndarray  # [Ts] int64
    chunk_bytes: np.ndarray  # [n_chunks] int64
    student_target: np.ndarray  # [Ts] bool

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_bytes)


@dataclass
class CrossTokens:
    """Both sides of a batch of texts, tokenized and aligned: model inputs plus row indices.

    `*_ids` / `*_attention` are right-padded [B, L] model inputs; the flat row tensors follow
    the attended positions in row-major order, so `hidden[attention]` gives matching rows.
    `student_ce` marks the student rows whose target a `ce` term trains on; `chunk_bytes` is
    the UTF-8 length of each (global) chunk.
    """

    teacher_ids: Tensor
    teacher_attention: Tensor
    student_ids: Tensor
    student_attention: Tensor
    teacher_targets: Tensor
    teacher_chunk: Tensor
    student_targets: Tensor
    student_chunk: Tensor
    teacher_offsets: Tensor
    student_offsets: Tensor
    chunk_offsets: Tensor
    n_chunks: int
    teacher_vocab: int
    student_vocab: int
    student_ce: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    chunk_bytes: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def batch(self, student_hidden: Tensor, teacher_hidden: Tensor | None = None) -> CrossBatch:
        """A `CrossBatch` from hidden states, given as [B, L, H] (padded) or [N, H] rows."""
        if student_hidden.dim() == 3:
            student_hidden = student_hidden[self.student_attention]
        if teacher_hidden is not None and teacher_hidden.dim() == 3:
            teacher_hidden = teacher_hidden[self.teacher_attention]
        out = CrossBatch(
            student_hidden=student_hidden,
            student_targets=self.student_targets.to(student_hidden.device),
            student_chunk=self.student_chunk.to(student_hidden.device),
            teacher_targets=self.teacher_targets.to(student_hidden.device),
            teacher_chunk=self.teacher_chunk.to(student_hidden.device),
            n_chunks=self.n_chunks,
            teacher_hidden=teacher_hidden,
            student_offsets=self.student_offsets,
            teacher_offsets=self.teacher_offsets,
            chunk_offsets=self.chunk_offsets,
            student_vocab=self.student_vocab,
            teacher_vocab=self.teacher_vocab,
        )
        out.validate()
        return out


def _rows(ids: Tensor, chunk: Tensor) -> tuple[Tensor, Tensor]:
    """(targets, chunk of the target) per position of one sequence."""
    targets = torch.full_like(ids, IGNORE)
    row_chunk = torch.full_like(ids, -1)
    targets[:-1] = ids[1:]
    row_chunk[:-1] = chunk[1:]
    return targets, row_chunk


def _pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    width = max([len(s) for s in seqs] + [1])
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    att = torch.zeros(len(seqs), width, dtype=torch.bool)
    for k, s in enumerate(seqs):
        ids[k, : len(s)] = s
        att[k, : len(s)] = True
    return ids, att


def collate_cross(
    examples: Sequence[CrossExample],
    teacher_vocab: int,
    student_vocab: int,
    max_len: int | None = None,
) -> CrossTokens:
    """Stack aligned examples into model inputs and row tensors, each side cut to `max_len`.

    Chunks that lose a token to the cut, or that contain a sequence's first token (which no
    row predicts), are dropped on both sides; the rest are renumbered with per-pair offsets.
    Examples aligned to several teachers (`data.members.MultiCrossExample`) collate into a
    `MultiCrossTokens` instead, each member with its own vocabulary (`teacher_vocab` unused).
    """
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    if examples and not isinstance(examples[0], CrossExample):
        from anydistill.data.members import collate_members

        return collate_members(examples, student_vocab, max_len)  # type: ignore[return-value]
    t_seqs, s_seqs, t_rows, s_rows, ce_rows, nbytes = [], [], [], [], [], []
    t_off, s_off, c_off = [0], [0], [0]
    for ex in examples:
        n_chunks = ex.n_chunks
        t_ids = torch.from_numpy(ex.teacher_ids[:max_len])
        s_ids = torch.from_numpy(ex.student_ids[:max_len])
        t_chunk = torch.from_numpy(ex.teacher_chunk)
        s_chunk = torch.from_numpy(ex.student_chunk)
        bad = torch.zeros(n_chunks + 1, dtype=torch.bool)  # last slot absorbs -1
        for chunk, n in ((t_chunk, len(t_ids)), (s_chunk, len(s_ids))):
            lost = torch.cat([chunk[:1], chunk[n:]])
            bad[lost.where(lost >= 0, torch.full_like(lost, n_chunks))] = True
        keep = ~bad[:-1]
        new_id = torch.cumsum(keep.long(), 0) - 1 + c_off[-1]
        for ids, chunk, seqs, rows, off in (
            (t_ids, t_chunk[: len(t_ids)], t_seqs, t_rows, t_off),
            (s_ids, s_chunk[: len(s_ids)], s_seqs, s_rows, s_off),
        ):
            ok = chunk >= 0
            ok[ok.clone()] = keep[chunk[ok]]
            mapped = torch.where(ok, new_id[chunk.clamp(min=0)], torch.full_like(chunk, -1))
            seqs.append(ids)
            rows.append(_rows(ids, mapped))
            off.append(off[-1] + len(ids))
        target = torch.from_numpy(ex.student_target[: len(s_ids)])
        ce = torch.zeros(len(s_ids), dtype=torch.bool)
        ce[:-1] = target[1:]
        ce_rows.append(ce)
        nbytes.append(torch.from_numpy(ex.chunk_bytes)[keep])
        c_off.append(c_off[-1] + int(keep.sum()))
    t_ids_pad, t_att = _pad(t_seqs)
    s_ids_pad, s_att = _pad(s_seqs)

    def cat(rows: list, k: int | None = None, dtype: torch.dtype = torch.long) -> Tensor:
        parts = [r if k is None else r[k] for r in rows]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)

    return CrossTokens(
        teacher_ids=t_ids_pad,
        teacher_attention=t_att,
        student_ids=s_ids_pad,
        student_attention=s_att,
        teacher_targets=cat(t_rows, 0),
        teacher_chunk=cat(t_rows, 1),
        student_targets=cat(s_rows, 0),
        student_chunk=cat(s_rows, 1),
        teacher_offsets=torch.tensor(t_off),
        student_offsets=torch.tensor(s_off),
        chunk_offsets=torch.tensor(c_off),
        n_chunks=c_off[-1],
        teacher_vocab=teacher_vocab,
        student_vocab=student_vocab,
        student_ce=cat(ce_rows, dtype=torch.bool),
        chunk_bytes=cat(nbytes),
    )


def text_example(teacher_tok: Any, student_tok: Any, text: str, add_special_tokens: bool = True):
    """`text` tokenized by both tokenizers and aligned; every text token is a target."""
    pair = align_texts(teacher_tok, student_tok, text, add_special_tokens=add_special_tokens)
    al = pair.alignment
    bounds = al.chunk_bounds.numpy()
    return CrossExample(
        teacher_ids=pair.teacher_ids.numpy(),
        student_ids=pair.student_ids.numpy(),
        teacher_chunk=al.teacher_chunk.numpy(),
        student_chunk=al.student_chunk.numpy(),
        chunk_bytes=(bounds[1:] - bounds[:-1]).astype(np.int64),
        student_target=al.student_chunk.numpy() >= 0,
    )


def build_cross_batch(
    teacher_tok: Any,
    student_tok: Any,
    texts: Sequence[str],
    max_len: int,
    add_special_tokens: bool = True,
) -> CrossTokens:
    """Tokenize `texts` with both tokenizers, truncate each side to `max_len` tokens, align.

    Chunks that lose a token to truncation, or that contain a sequence's first token (which
    no row predicts), are dropped on both sides; the rest are renumbered with per-pair offsets.
    Special tokens added by the tokenizers (bos/eos) are in no chunk.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    examples = [text_example(teacher_tok, student_tok, t, add_special_tokens) for t in texts]
    return collate_cross(
        examples,
        len(token_view(teacher_tok).token_bytes),
        len(token_view(student_tok).token_bytes),
        max_len,
    )

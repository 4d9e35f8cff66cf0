"""MinED: KL through a minimum-edit-distance vocabulary map, on one-to-one chunks.

The MinED baseline of Wan et al. 2024, "Knowledge Fusion of Large Language Models" (ICLR),
as used for cross-tokenizer distillation by Zhang et al. 2024, "Dual-Space Knowledge
Distillation for Large Language Models". Each teacher token is mapped once to the student
token whose bytes are nearest in edit distance (`vocab.mined_map`, cached on disk); the
teacher's distribution is carried onto the student vocabulary by adding up the probabilities
of the teacher tokens mapped to each student token, and compared with forward KL:

    p~(w) = sum_{v : map(v) = w} p_T(v | r),        loss_c = KL(p~ || p_S(. | u))

on every chunk made of one teacher token (row r) and one student token (row u), both at
softmax temperature T. loss = sum over one-to-one chunks; count = number of such chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.data.aligned import CrossBatch
from anydistill.losses.cross.common import (
    block_size,
    blocks,
    check_vocab_map,
    fused_block_sum,
    one_to_one,
    student_side,
    teacher_scores,
    teacher_side,
)
from anydistill.losses.divergences import forward_kl
from anydistill.losses.engine import Head


def mined_loss(
    batch: CrossBatch,
    student_head: Head,
    teacher: Head | Tensor,
    *,
    mapping: Tensor,
    temperature: float = 1.0,
    block_rows: int | None = None,
) -> tuple[Tensor, int]:
    """(sum over one-to-one chunks of KL(mapped teacher || student), number of chunks).

    `mapping` is LongTensor [V_t] of student ids (`vocab.mined_map`).
    """
    if temperature <= 0:
        raise ValueError("mined needs temperature > 0")
    batch.validate()
    s, t = student_side(batch, student_head), teacher_side(batch, teacher)
    dev = batch.student_hidden.device
    if mapping.dim() != 1 or len(mapping) < t.vocab:
        raise ValueError(f"mapping must be [V_t] with V_t >= {t.vocab}, got {list(mapping.shape)}")
    mapping = mapping[: t.vocab].to(dev)
    check_vocab_map("mapping", mapping, s.vocab, "student")
    size = min(block_size(s.vocab, dev, block_rows), block_size(t.vocab, dev, block_rows))
    s_rows, t_rows = one_to_one(batch)
    spans = list(blocks(len(s_rows), size))

    def fn(k: int, lq: Tensor, _: Tensor | None) -> Tensor:
        a, b = spans[k]
        pt = teacher_scores(t, t_rows[a:b], temperature, dev).exp()
        mapped = torch.zeros(b - a, s.vocab, device=dev).index_add_(1, mapping, pt)
        return forward_kl(lq, mapped.log()).sum()

    total = fused_block_sum(s, [s_rows[a:b] for a, b in spans], fn, temperature)
    return total, len(s_rows)

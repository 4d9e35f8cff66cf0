"""Universal logit distillation (ULD) on one-to-one chunks.

Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation
Loss for LLMs". Two vocabularies have no common support, so ULD compares the distributions'
shapes: the closed form of the Wasserstein-1 distance it uses is the L1 distance between
both probability vectors sorted in decreasing order, the smaller one padded with zeros:

    ULD(p, q) = sum_k |sort_desc(p)_k - sort_desc(q)_k|,   k over max(V_t, V_s) entries.

The paper pairs positions by index; here a pair is a chunk made of exactly one teacher token
and one student token spelling the same bytes at the same place in the text, and
p, q = softmax(logits / T) are the two rows predicting those tokens.
loss = sum over one-to-one chunks; count = number of such chunks.
"""

from __future__ import annotations

from torch import Tensor

from anydistill.data.aligned import CrossBatch
from anydistill.losses.cross.common import (
    block_size,
    blocks,
    fused_block_sum,
    one_to_one,
    sort_values,
    student_side,
    teacher_scores,
    teacher_side,
)
from anydistill.losses.engine import Head


def sorted_l1(a: Tensor, b: Tensor) -> Tensor:
    """Per row: sum_k |a_k - b_k| of two rows sorted in decreasing order, the shorter padded
    with zeros; taken on increasing-sorted rows, aligned at their largest entries."""
    k = min(a.shape[1], b.shape[1])
    out = (a[:, a.shape[1] - k :] - b[:, b.shape[1] - k :]).abs().sum(-1)
    return out + a[:, : a.shape[1] - k].sum(-1) + b[:, : b.shape[1] - k].sum(-1)


def uld_loss(
    batch: CrossBatch,
    student_head: Head,
    teacher: Head | Tensor,
    *,
    temperature: float = 1.0,
    block_rows: int | None = None,
) -> tuple[Tensor, int]:
    """(sum over one-to-one chunks of the sorted-probability L1, number of such chunks)."""
    if temperature <= 0:
        raise ValueError("ULD needs temperature > 0")
    batch.validate()
    s, t = student_side(batch, student_head), teacher_side(batch, teacher)
    dev = batch.student_hidden.device
    size = min(block_size(s.vocab, dev, block_rows), block_size(t.vocab, dev, block_rows))
    s_rows, t_rows = one_to_one(batch)
    spans = list(blocks(len(s_rows), size))

    def fn(k: int, lq: Tensor, _: Tensor | None) -> Tensor:
        a, b = spans[k]
        pt = sort_values(teacher_scores(t, t_rows[a:b], temperature, dev).exp())
        return sorted_l1(sort_values(lq.exp()), pt).sum()

    total = fused_block_sum(s, [s_rows[a:b] for a, b in spans], fn, temperature)
    return total, len(s_rows)

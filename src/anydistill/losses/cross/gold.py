"""GOLD-style hybrid: JSD on the shared vocabulary, ULD on the rest, merged multi-token chunks.

The idea of TRL's experimental GOLD trainer (Patiño et al. 2025, "Unlocking On-Policy
Distillation for Any Model Family"), with tokens matched by the bytes they spell rather than
by vocabulary string (so 'Ġthe' and '▁the' match). What is computed, per usable chunk c with
teacher rows r_1..r_m (predicting t_1..t_m) and student rows u_1..u_n (predicting s_1..s_n):

    merged teacher vector  P_c(v) = p_T(v | r_1) * prod_{k=2..m} p_T(t_k | r_k)    (v in V_t)
    merged student vector  Q_c(w) = p_S(w | u_1) * prod_{k=2..n} p_S(s_k | u_k)    (w in V_s)

(the first step's whole distribution times the probabilities of the actual continuation, as
in TRL; entry t_1 of P_c is the chunk's probability; the vector is not renormalised, and a
one-token chunk gives the plain distribution). All probabilities at softmax temperature T.
With the matched pairs (a_i, b_i) of `vocab.vocab_intersection` and the unmatched rest U_t, U_s:

    matched    JSD_beta(P_c[a], Q_c[b])    generalized JSD (TRL GKD convention, mixture
               m = beta P + (1 - beta) Q) applied to the unnormalised sub-vectors as given;
    unmatched  sum_k |sort_desc(P_c[U_t])_k - sort_desc(Q_c[U_s])_k| (zero-padded);
    loss_c = w_m * matched + w_u * unmatched,  w_m = |matched| / V_t and w_u = 1 - w_m unless
    given (TRL's defaults).

loss = sum over usable chunks; count = number of usable chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.data.aligned import CrossBatch
from anydistill.losses.cross.common import (
    Side,
    block_size,
    blocks,
    check_vocab_map,
    chunk_rows,
    fused_block_sum,
    sort_values,
    student_side,
    target_logp,
    teacher_scores,
    teacher_side,
)
from anydistill.losses.cross.uld import sorted_l1
from anydistill.losses.divergences import generalized_jsd
from anydistill.losses.engine import Head


def _first_and_tail(
    side: Side, chunk: Tensor, rows: Tensor, targets: Tensor, n: int, temperature: float, size: int
) -> tuple[Tensor, Tensor]:
    """First row of each chunk, and the summed target log-probs of its other rows (only
    those rows are projected here; one-token chunks need none)."""
    first = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(0, chunk[rows], rows, reduce="amin", include_self=False)
    later = rows[rows != first[chunk[rows]]]
    logp = target_logp(side, later, targets[later], temperature, size)
    tail = torch.zeros(n, dtype=logp.dtype, device=rows.device)
    return first, tail.index_add(0, chunk[later], logp.to(rows.device))


def _complement(ids: Tensor, size: int) -> Tensor:
    keep = torch.ones(size, dtype=torch.bool, device=ids.device)
    keep[ids] = False
    return keep.nonzero(as_tuple=True)[0]


def gold_hybrid_loss(
    batch: CrossBatch,
    student_head: Head,
    teacher: Head | Tensor,
    *,
    matched: tuple[Tensor, Tensor],
    beta: float = 0.5,
    temperature: float = 1.0,
    matched_weight: float | None = None,
    unmatched_weight: float | None = None,
    block_rows: int | None = None,
) -> tuple[Tensor, int]:
    """(sum over usable chunks of the hybrid loss, number of chunks); see the module doc.

    `matched` = (teacher ids, student ids), one-to-one, from `vocab.vocab_intersection`.
    """
    if temperature <= 0 or not 0.0 <= beta <= 1.0:
        raise ValueError("gold_hybrid needs temperature > 0 and 0 <= beta <= 1")
    batch.validate()
    s, t = student_side(batch, student_head), teacher_side(batch, teacher)
    dev = batch.student_hidden.device
    t_ids, s_ids = (x.to(dev) for x in matched)
    keep = (t_ids < t.vocab) & (s_ids < s.vocab)
    t_ids, s_ids = t_ids[keep], s_ids[keep]
    check_vocab_map("matched", t_ids, t.vocab, "teacher")
    check_vocab_map("matched", s_ids, s.vocab, "student")
    t_un, s_un = _complement(t_ids, t.vocab), _complement(s_ids, s.vocab)
    w_m = len(t_ids) / t.vocab if matched_weight is None else matched_weight
    w_u = 1.0 - w_m if unmatched_weight is None else unmatched_weight
    size = min(block_size(s.vocab, dev, block_rows), block_size(t.vocab, dev, block_rows))
    c = chunk_rows(batch)
    n = batch.n_chunks
    s_first, s_tail = _first_and_tail(
        s, batch.student_chunk, c.s_rows, batch.student_targets, n, temperature, size
    )
    t_first, t_tail = _first_and_tail(
        t, batch.teacher_chunk, c.t_rows, batch.teacher_targets, n, temperature, size
    )
    chunks = c.valid.nonzero(as_tuple=True)[0]
    spans = list(blocks(len(chunks), size))

    def fn(k: int, lq: Tensor, tail: Tensor | None) -> Tensor:
        a, b = spans[k]
        ch = chunks[a:b]
        assert tail is not None
        lp = teacher_scores(t, t_first[ch], temperature, dev) + t_tail[ch, None]
        lq = lq + tail[ch, None]
        part = torch.zeros(len(ch), device=lq.device)
        if len(s_ids):
            part = part + w_m * generalized_jsd(lq[:, s_ids], lp[:, t_ids], beta)
        if len(s_un) or len(t_un):
            p_u = sort_values(lp[:, t_un].exp())
            q_u = sort_values(lq[:, s_un].exp())
            part = part + w_u * sorted_l1(q_u, p_u)
        return part.sum()

    rows = [s_first[chunks[a:b]] for a, b in spans]
    return fused_block_sum(s, rows, fn, temperature, extra=s_tail), len(chunks)

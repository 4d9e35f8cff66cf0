"""Approximate likelihood matching (ALM) on aligned chunks.

Minixhofer, Vulić and Ponti 2025, "Universal Cross-Tokenizer Distillation via Approximate
Likelihood Matching". A chunk spells the same bytes on both sides, so both models assign it
a likelihood: the product of the step probabilities of the chunk's actual tokens,

    a_T(c) = sum_{i in c} log p_T(t_i | t_<i),    a_S(c) = sum_{j in c} log p_S(s_j | s_<j).

Each chunk likelihood is binarised at temperature tau (the event "the model produces this
chunk" against everything else) and the two Bernoullis are compared with an f-divergence:

    x = a_T(c) / tau - eps,   y = a_S(c) / tau - eps,   P = exp(x),  Q = exp(y)
    binary_kl:          KL(Bern(P) || Bern(Q)) = P (x - y) + (1 - P) (log(1 - P) - log(1 - Q))
    binary_reverse_kl:  KL(Bern(Q) || Bern(P))

    loss = sum over usable chunks of the divergence;   count = number of chunks used.

binary_kl is the authors' default `binary_ce` minus the teacher's binary entropy, a constant:
same gradient, and zero when the likelihoods agree. tau = 100 and eps = 1e-6 follow the
authors' code (tokenkit). Both sides use their own rows only; no vocabulary map is needed.
A CE term on the student's own targets combines with it as a separate objective term.

Debiasing (`debias=True`, the paper's correction for tokenization bias): a chunk's
likelihood also depends on how the text continues (the next token may absorb the chunk's
last bytes on one side). A chunk that ends where the next token starts with whitespace is
unbiased, so chunks are merged forward until one ends where the teacher puts probability
above `space_threshold` on a whitespace-initial next token, and each side's merged
likelihood is multiplied by its own probability of such a token after the merged chunk:

    A(g) = sum_{c in g} a(c) + log sum_{v starts with whitespace} p(v | text up to g).

A trailing run of chunks that never reaches such a boundary (or contains an unusable chunk)
is dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.data.aligned import CrossBatch
from anydistill.losses.cross.common import (
    Side,
    block_size,
    blocks,
    call_block,
    chunk_rows,
    student_side,
    target_logp,
    teacher_side,
)
from anydistill.losses.engine import Head

ALM_DIVERGENCES = ("binary_kl", "binary_reverse_kl")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x."""
    near = x > -0.6931471805599453
    a = torch.where(near, x, torch.full_like(x, -1.0))  # keep each branch's input in range
    b = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def binary_divergence(kind: str, x: Tensor, y: Tensor) -> Tensor:
    """f-divergence between Bern(exp(x)) (teacher) and Bern(exp(y)) (student), elementwise."""
    if kind == "binary_reverse_kl":
        x, y = y, x
    elif kind != "binary_kl":
        raise ValueError(f"unknown ALM divergence {kind!r}; choose one of {ALM_DIVERGENCES}")
    p = torch.exp(x)
    return p * (x - y) + (-torch.expm1(x)) * (log1mexp(x) - log1mexp(y))


def _space_logp(side: Side, rows: Tensor, space: Tensor, size: int) -> Tensor:
    """log P(next token starts with whitespace) at each of `rows`."""
    ids = space[: side.vocab].nonzero(as_tuple=True)[0].to(rows.device)
    out = [torch.zeros(0, device=rows.device)]
    for a, b in blocks(len(rows), size):
        r = rows[a:b]
        out.append(call_block(side, lambda s, r=r: s.scores(r)[:, ids].logsumexp(-1)))
    return torch.cat(out)


def _last_rows(chunk: Tensor, rows: Tensor, n: int) -> Tensor:
    """Largest row index of each chunk (-1 where a chunk has no row)."""
    last = torch.full((n,), -1, dtype=torch.long, device=rows.device)
    return last.scatter_reduce(0, chunk[rows], rows, reduce="amax")


def _next_rows(last: Tensor, offsets: Tensor | None, n_rows: int) -> tuple[Tensor, Tensor]:
    """The row after each chunk's last row, and whether it lies in the same pair."""
    nxt = last + 1
    if offsets is None:
        end = torch.full_like(last, n_rows)
    else:
        off = offsets.to(last.device)
        end = off[torch.searchsorted(off, last, right=True).clamp(max=len(off) - 1)]
    ok = (last >= 0) & (nxt < end)
    return nxt.where(ok, torch.zeros_like(nxt)), ok


def _debias(
    batch: CrossBatch,
    s: Side,
    t: Side,
    a_s: Tensor,
    a_t: Tensor,
    valid: Tensor,
    s_rows: Tensor,
    t_rows: Tensor,
    spaces: tuple[Tensor, Tensor],
    threshold: float,
    sizes: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Merged-chunk log-likelihoods (student, teacher) with the whitespace factor appended."""
    n = batch.n_chunks
    s_next, s_ok = _next_rows(
        _last_rows(batch.student_chunk, s_rows, n), batch.student_offsets, len(batch.student_chunk)
    )
    t_next, t_ok = _next_rows(
        _last_rows(batch.teacher_chunk, t_rows, n), batch.teacher_offsets, len(batch.teacher_chunk)
    )
    has = valid & s_ok & t_ok
    cand = has.nonzero(as_tuple=True)[0]
    sp_s = torch.zeros(n, dtype=torch.float64, device=a_s.device)
    sp_t = torch.zeros_like(sp_s)
    sp_s = sp_s.index_put((cand,), _space_logp(s, s_next[cand], spaces[1], sizes[0]).double())
    sp_t = sp_t.index_put((cand,), _space_logp(t, t_next[cand], spaces[0], sizes[1]).double())
    boundary = has & (sp_t.exp() > threshold)
    pair_last = torch.zeros(n, dtype=torch.bool, device=valid.device)
    if batch.chunk_offsets is not None:
        ends = batch.chunk_offsets[1:].to(valid.device) - 1
        pair_last[ends[ends >= 0]] = True
    elif n:
        pair_last[-1] = True
    cut = boundary | pair_last | ~valid
    group = torch.cumsum(cut.long(), 0) - cut.long()  # chunks up to and including a cut
    n_groups = int(group[-1]) + 1 if n else 0
    keep_group = torch.zeros(n_groups, dtype=torch.bool, device=valid.device)
    keep_group[group[boundary]] = True
    keep_group[group[~valid]] = False  # a group with an unusable chunk is incomplete
    g_s = torch.zeros(n_groups, dtype=torch.float64, device=a_s.device).index_add(0, group, a_s)
    g_t = torch.zeros_like(g_s).index_add(0, group, a_t)
    g_s = g_s.index_add(0, group[boundary], sp_s[boundary])
    g_t = g_t.index_add(0, group[boundary], sp_t[boundary])
    return g_s[keep_group], g_t[keep_group]


def alm_loss(
    batch: CrossBatch,
    student_head: Head,
    teacher: Head | Tensor,
    *,
    temperature: float = 100.0,
    divergence: str = "binary_kl",
    eps: float = 1e-6,
    debias: bool = False,
    teacher_space: Tensor | None = None,
    student_space: Tensor | None = None,
    space_threshold: float = 0.1,
    block_rows: int | None = None,
) -> tuple[Tensor, int]:
    """(sum over chunks of the binarised divergence, number of chunks); see the module doc.

    `temperature` is ALM's binarisation temperature tau, not a softmax temperature.
    `teacher_space` / `student_space` (Bool [V], `vocab.space_mask`) are needed for `debias`.
    """
    if temperature <= 0 or eps <= 0:
        raise ValueError("ALM needs temperature > 0 and eps > 0")
    if divergence not in ALM_DIVERGENCES:
        raise ValueError(f"unknown ALM divergence {divergence!r}; choose one of {ALM_DIVERGENCES}")
    batch.validate()
    s, t = student_side(batch, student_head), teacher_side(batch, teacher)
    dev = batch.student_hidden.device
    sizes = (block_size(s.vocab, dev, block_rows), block_size(t.vocab, dev, block_rows))
    c = chunk_rows(batch)
    ls = target_logp(s, c.s_rows, batch.student_targets[c.s_rows], 1.0, sizes[0])
    lt = target_logp(t, c.t_rows, batch.teacher_targets[c.t_rows], 1.0, sizes[1])
    n = batch.n_chunks
    a_s = torch.zeros(n, dtype=torch.float64, device=dev)
    a_s = a_s.index_add(0, batch.student_chunk[c.s_rows], ls.double())
    a_t = torch.zeros(n, dtype=torch.float64, device=dev)
    a_t = a_t.index_add(0, batch.teacher_chunk[c.t_rows], lt.double().to(dev))
    if debias:
        if teacher_space is None or student_space is None:
            raise ValueError("ALM debias needs teacher_space and student_space masks")
        spaces = (teacher_space.to(dev), student_space.to(dev))
        for mask, side in zip(spaces, (t, s), strict=True):
            if not bool(mask[: side.vocab].any()):
                raise ValueError("ALM debias: a whitespace mask marks no token of its vocabulary")
        y_all, x_all = _debias(
            batch, s, t, a_s, a_t, c.valid, c.s_rows, c.t_rows, spaces, space_threshold, sizes
        )
    else:
        y_all, x_all = a_s[c.valid], a_t[c.valid]
    x = x_all.detach() / temperature - eps
    y = y_all / temperature - eps
    value = binary_divergence(divergence, x, y).sum()
    return value.float(), int(x.numel())

"""Shared machinery of the cross-tokenizer terms: blocks of rows, chunk bookkeeping.

Memory stays bounded by working on blocks of rows: each block's `[rows, V]` logits are
built, reduced to what the term needs and dropped. Two ways keep backward bounded too:

- `fused_block_sum` (terms that are a sum of per-block losses: uld, gold_hybrid, mined):
  like the loss engine's fused path, each block's gradient w.r.t. its hidden rows and the
  head is computed during the forward and accumulated, so nothing is recomputed;
- `call_block` (per-row quantities that feed a chunk-level function: alm's chunk
  log-likelihoods): the block runs under `torch.utils.checkpoint`, and backward rebuilds one
  block at a time.

Only rows inside usable chunks are ever projected; chunk-level bookkeeping uses index
tensors and scatters, never a dense [Tt x Ts] matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from anydistill.data.aligned import IGNORE, CrossBatch, CrossTokens
from anydistill.losses.chunk_math import project, transform
from anydistill.losses.engine import Head, auto_chunk_size
from anydistill.losses.grad_in_forward import GradInForward


@dataclass
class Side:
    """One model's rows: hidden states + head (student, or teacher online) or log-probs."""

    vocab: int
    hidden: Tensor | None = None
    head: Head | None = None
    logp: Tensor | None = None  # [N, V] teacher log-probs given directly
    grad: bool = False

    def scores(self, rows: Tensor, temperature: float = 1.0) -> Tensor:
        """float32 log-softmax(logits / T) of the given rows: [len(rows), vocab]."""
        if self.logp is not None:
            z = self.logp.index_select(0, rows)[:, : self.vocab].float()
        else:
            assert self.hidden is not None and self.head is not None
            h = self.hidden.index_select(0, rows)
            w, b = self.head.weight, self.head.bias
            if not self.grad:
                h, w = h.detach(), w.detach()
                b = b.detach() if b is not None else None
            raw = project(h, w, b, self.vocab)
            z = transform(raw, float(self.head.logit_scale), self.head.softcap)
        if temperature != 1.0:
            z = z / temperature
        return torch.log_softmax(z.float(), dim=-1)


def student_side(batch: CrossBatch, head: Head) -> Side:
    vocab = batch.student_vocab or head.weight.shape[0]
    if vocab > head.weight.shape[0]:
        raise ValueError(f"the student head has {head.weight.shape[0]} rows, vocab is {vocab}")
    return Side(vocab=vocab, hidden=batch.student_hidden, head=head, grad=True)


def teacher_side(batch: CrossBatch, teacher: Head | Tensor) -> Side:
    if isinstance(teacher, Tensor):
        vocab = batch.teacher_vocab or teacher.shape[1]
        if teacher.dim() != 2 or teacher.shape[0] != batch.teacher_targets.shape[0]:
            raise ValueError(
                f"teacher log-probs must be [{batch.teacher_targets.shape[0]}, V_t], "
                f"got {list(teacher.shape)}"
            )
        return Side(vocab=min(vocab, teacher.shape[1]), logp=teacher.detach())
    if batch.teacher_hidden is None:
        raise ValueError("a teacher Head needs batch.teacher_hidden")
    vocab = batch.teacher_vocab or teacher.weight.shape[0]
    if vocab > teacher.weight.shape[0]:
        raise ValueError(f"the teacher head has {teacher.weight.shape[0]} rows, vocab is {vocab}")
    return Side(vocab=vocab, hidden=batch.teacher_hidden, head=teacher)


def block_size(vocab: int, device: torch.device, block_rows: int | None) -> int:
    """Rows per block: the loss engine's budget (one float32 [rows, V] block) unless given."""
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        return block_rows
    return auto_chunk_size(vocab, device)


def blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _rebound(side: Side, hidden: Tensor | None, weight: Tensor | None, bias: Tensor | None):
    """`side` with its tensors replaced by the (checkpoint-provided) arguments."""
    if side.head is None:
        return side
    head = Head(weight, bias, side.head.logit_scale, side.head.softcap)
    return Side(vocab=side.vocab, hidden=hidden, head=head, logp=side.logp, grad=side.grad)


def call_block(side: Side, fn: Callable[[Side], Tensor]) -> Tensor:
    """fn(side) for one block with autocast off: without grad for a teacher, checkpointed
    on the hidden states and head for a student (backward rebuilds the block's logits)."""
    head = side.head
    tensors = (side.hidden, head.weight, head.bias) if head is not None else (None, None, None)
    ref = side.hidden if side.hidden is not None else side.logp
    device = ref.device.type if ref is not None else "cpu"

    def inner(hidden: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        with torch.autocast(device_type=device, enabled=False):
            return fn(_rebound(side, hidden, weight, bias))

    if not side.grad:
        with torch.no_grad():
            return inner(*tensors)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return checkpoint(inner, *tensors, use_reentrant=False)
    return inner(*tensors)


def teacher_scores(side: Side, rows: Tensor, temperature: float, device: torch.device) -> Tensor:
    """The teacher's log-probs of `rows` without grad. Terms call this inside the student's
    checkpointed block, so backward recomputes it instead of keeping every block alive."""
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        return side.scores(rows, temperature).to(device)


def fused_block_sum(
    side: Side,
    row_blocks: Sequence[Tensor],
    fn: Callable[[int, Tensor, Tensor | None], Tensor],
    temperature: float,
    extra: Tensor | None = None,
) -> Tensor:
    """sum_k fn(k, log_softmax(student logits of row_blocks[k] / T), extra) as a scalar.

    Each block's gradient (w.r.t. its hidden rows, the head and the small `extra` tensor) is
    taken right after its forward, by autograd on that block alone, and accumulated; only one
    block's [rows, V] tensors are ever alive and none is recomputed. Not twice differentiable.
    """
    head = side.head
    assert head is not None and side.hidden is not None
    hidden, weight, bias = side.hidden, head.weight, head.bias
    inputs = (hidden, weight, bias, extra)
    want = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    device = hidden.device

    def run(
        needs: Sequence[bool],
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        extra: Tensor | None,
    ) -> tuple[Tensor, tuple, list[Tensor | None]]:
        acc = [
            torch.zeros(t.shape, dtype=torch.float32, device=t.device)
            if want and t is not None and t.requires_grad
            else None
            for t in (hidden, weight, bias, extra)
        ]
        total = torch.zeros((), dtype=torch.float32, device=device)
        for k, rows in enumerate(row_blocks):
            with torch.enable_grad(), torch.autocast(device_type=device.type, enabled=False):
                h = hidden.index_select(0, rows).detach().requires_grad_(acc[0] is not None)
                leaves = [h] + [
                    None if t is None else t.detach().requires_grad_(a is not None)
                    for t, a in zip((weight, bias, extra), acc[1:], strict=True)
                ]
                z = transform(project(h, leaves[1], leaves[2], side.vocab), *_head_args(head))
                if temperature != 1.0:
                    z = z / temperature
                loss = fn(k, torch.log_softmax(z.float(), dim=-1), leaves[3])
                live = [i for i, a in enumerate(acc) if a is not None]
                if live and loss.requires_grad:
                    grads = torch.autograd.grad(loss, [leaves[i] for i in live], allow_unused=True)
                    for i, g in zip(live, grads, strict=True):
                        if g is None:
                            continue
                        if i == 0:
                            acc[0].index_add_(0, rows, g.float())
                        else:
                            acc[i].add_(g.float())
            total = total + loss.detach().float()
        grads = [
            None if a is None else a.to(t.dtype)
            for a, t in zip(acc, (hidden, weight, bias, extra), strict=True)
        ]
        return total, (), grads

    if want:
        return GradInForward.apply(run, hidden, weight, bias, extra)[0]
    return run((False,) * 4, hidden, weight, bias, extra)[0]


def _head_args(head: Head) -> tuple[float, float | None]:
    return float(head.logit_scale), head.softcap


def sort_values(x: Tensor) -> Tensor:
    """Each row sorted in increasing order, differentiable (numpy's sort is faster on CPU)."""
    if x.device.type != "cpu":
        return x.sort(-1).values
    if not x.requires_grad:
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    order = torch.from_numpy(np.argsort(x.detach().numpy(), axis=-1))
    return x.gather(-1, order)


def target_logp(side: Side, rows: Tensor, targets: Tensor, temperature: float, size: int) -> Tensor:
    """log p(target | row) at temperature T for each of `rows`, in blocks: [len(rows)]."""
    out = []
    for a, b in blocks(len(rows), size):
        r, y = rows[a:b], targets[a:b]
        out.append(
            call_block(side, lambda s, r=r, y=y: s.scores(r, temperature).gather(1, y[:, None]))
        )
    if not out:
        return torch.zeros(0, device=rows.device)
    return torch.cat(out).squeeze(1)


@dataclass
class Chunks:
    """Row bookkeeping of the chunks usable in a batch (rows on both sides)."""

    valid: Tensor  # [n_chunks] bool
    s_rows: Tensor  # student rows in usable chunks
    t_rows: Tensor
    s_count: Tensor  # [n_chunks] student rows per chunk
    t_count: Tensor


def chunk_rows(batch: CrossBatch | CrossTokens) -> Chunks:
    """Rows in usable chunks: chunks with rows on both sides, none of them without a target."""
    n = batch.n_chunks
    s_in, t_in = batch.student_chunk >= 0, batch.teacher_chunk >= 0
    s_ok = s_in & (batch.student_targets != IGNORE)
    t_ok = t_in & (batch.teacher_targets != IGNORE)
    s_count = torch.bincount(batch.student_chunk[s_ok], minlength=n)
    t_count = torch.bincount(batch.teacher_chunk[t_ok], minlength=n)
    s_gap = torch.bincount(batch.student_chunk[s_in & ~s_ok], minlength=n)
    t_gap = torch.bincount(batch.teacher_chunk[t_in & ~t_ok], minlength=n)
    valid = (s_count > 0) & (t_count > 0) & (s_gap == 0) & (t_gap == 0)
    s_rows = s_ok.nonzero(as_tuple=True)[0]
    t_rows = t_ok.nonzero(as_tuple=True)[0]
    s_rows = s_rows[valid[batch.student_chunk[s_rows]]]
    t_rows = t_rows[valid[batch.teacher_chunk[t_rows]]]
    return Chunks(valid, s_rows, t_rows, s_count, t_count)


def unit_counts(batch: CrossBatch | CrossTokens) -> tuple[int, int]:
    """(usable chunks, usable chunks of one token on each side) of a batch, from its chunk
    ids and targets alone: `CrossTokens` before any forward, or a `CrossBatch`."""
    c = chunk_rows(batch)  # reads only the chunk ids, the targets and n_chunks
    single = c.valid & (c.s_count == 1) & (c.t_count == 1)
    return int(c.valid.sum()), int(single.sum())


def one_to_one(batch: CrossBatch) -> tuple[Tensor, Tensor]:
    """(student row, teacher row) of every usable chunk made of one token on each side."""
    c = chunk_rows(batch)
    single = c.valid & (c.s_count == 1) & (c.t_count == 1)
    s_of = torch.full((batch.n_chunks,), -1, dtype=torch.long, device=single.device)
    t_of = torch.full_like(s_of, -1)
    s_of[batch.student_chunk[c.s_rows]] = c.s_rows
    t_of[batch.teacher_chunk[c.t_rows]] = c.t_rows
    return s_of[single], t_of[single]


def check_vocab_map(name: str, ids: Tensor, size: int, side: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
        raise ValueError(f"{name} has {side} ids outside the {side} vocabulary ({size})")

"""REDI: reinforcement distillation from a correct and an incorrect teacher trace per prompt.

Xu et al. 2025, "Harnessing Negative Signals: Reinforcement Distillation from Teacher Data
for LLM Reasoning" (arXiv 2505.24850). Per pair of completions of one prompt x, the
reference-free loss is

    L = -log pi(y+ | x) / |y+|  +  alpha * log pi(y- | x) / |y-|

(y+ verified correct, y- incorrect; log pi a sum of token log-probs over the completion's
target tokens, |y| their count; alpha 0.8 in the paper), averaged over the step's pairs.

The loss is linear in the token log-probs: every target token t of a paired row r carries
the weight c_r = -1 / |y+| (correct) or alpha / |y-| (incorrect), divided by the step's
global pair count, and the loss is sum_t c_r(t) * log p(y_t). So it is a weighted token
cross-entropy, computed here block by block over rows (`chunk_math.project` through the
`Head`, float32 with autocast off) with each block's gradient folded into d(hidden rows),
d(head weight) and d(head bias) during the forward (`GradInForward`): no `[rows, V]` tensor
outlives its block and none is recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from anydistill.losses.chunk_math import (
    compute_dtype,
    matmul_dtype,
    mm_float32,
    project,
    transform,
    transform_backward,
)
from anydistill.losses.engine import auto_chunk_size
from anydistill.losses.grad_in_forward import GradInForward
from anydistill.models.heads import Head

CORRECT, INCORRECT, UNPAIRED = 1, -1, 0  # a row's pair role


def weighted_logp(
    hidden: Tensor,
    head: Head,
    labels: Tensor,
    weights: Tensor,
    vocab_size: int,
    block_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(sum_t weights[t] * log p(labels[t] | hidden[t]), the log-probs `[N]` without grad).

    `hidden` `[N, H]` rows, `labels` `[N]` ids below `vocab_size` (the head's rows past it are
    padding and are cut off), `weights` `[N]` constants. Differentiable in `hidden` and the
    head's weight and bias; float32 math (float64 inputs stay float64, for references).
    """
    n = hidden.shape[0]
    if labels.shape != (n,) or weights.shape != (n,):
        raise ValueError(
            f"labels and weights must be [{n}], got {list(labels.shape)} and {list(weights.shape)}"
        )
    if vocab_size > head.weight.shape[0]:
        raise ValueError(f"the head has {head.weight.shape[0]} rows, vocab is {vocab_size}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= vocab_size):
        raise ValueError(f"labels must lie in [0, {vocab_size})")
    size = block_rows if block_rows is not None else auto_chunk_size(vocab_size, hidden.device)
    if size < 1:
        raise ValueError(f"block_rows must be >= 1, got {size}")
    plan = _Plan(vocab_size, float(head.logit_scale), head.softcap, size,
                 matmul_dtype(hidden.device, hidden))  # fmt: skip
    inputs = (hidden, head.weight, head.bias)
    want = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)

    def run(needs: Sequence[bool], h: Tensor, w: Tensor, b: Tensor | None):
        return _blocks(plan, h, w, b, labels, weights.detach(), needs)

    if want:
        total, logp = GradInForward.apply(run, *inputs)
        return total, logp
    total, (logp,), _ = run((False, False, False), *inputs)
    return total, logp


@dataclass(frozen=True)
class _Plan:
    vocab: int
    scale: float
    cap: float | None
    block: int
    mm: torch.dtype | None  # the head matmuls' dtype under bf16 autocast, else None


def _blocks(
    plan: _Plan,
    hs: Tensor,
    w: Tensor,
    b: Tensor | None,
    labels: Tensor,
    weights: Tensor,
    needs: Sequence[bool],
) -> tuple[Tensor, tuple[Tensor], list[Tensor | None]]:
    dtype = compute_dtype(hs)
    acc = {"dtype": dtype, "device": hs.device}
    need_h, need_w, need_b = needs
    d_h = torch.zeros(hs.shape, **acc) if need_h else None
    d_w = torch.zeros(w.shape, **acc) if need_w else None
    d_b = torch.zeros(b.shape, **acc) if need_b and b is not None else None
    total = torch.zeros((), **acc)
    logp = torch.zeros(hs.shape[0], **acc)
    v, mm = plan.vocab, plan.mm
    w_rows = w[:v] if mm is None else w[:v].to(mm)
    h_rows = hs if mm is None else hs.to(mm)
    with torch.no_grad(), torch.autocast(device_type=hs.device.type, enabled=False):
        for start in range(0, hs.shape[0], plan.block):
            end = min(start + plan.block, hs.shape[0])
            h, y = h_rows[start:end], labels[start:end]
            z = transform(project(h, w_rows, b, v, mm), plan.scale, plan.cap).to(dtype)
            lse = torch.logsumexp(z, dim=-1)
            picked = z.gather(1, y[:, None]).squeeze(1) - lse
            logp[start:end] = picked
            c = weights[start:end].to(dtype)
            total += (c * picked).sum()
            if not (need_h or need_w or need_b):
                continue
            # d(c log p_y)/dz = c (onehot(y) - softmax(z)), then back through scale and cap.
            grad = torch.exp(z - lse[:, None]).mul_(-c[:, None])
            grad.scatter_add_(1, y[:, None], c[:, None])
            grad = transform_backward(grad, z, plan.scale, plan.cap)
            if d_h is not None:
                _acc(d_h[start:end], grad, w_rows, mm)
            if d_w is not None:
                _acc(d_w[:v], grad.T, h, mm)
            if d_b is not None:
                d_b[:v] += grad.sum(dim=0)
            del z, grad
    return total, (logp,), [d_h, d_w, d_b]


def _acc(out: Tensor, a: Tensor, b: Tensor, mm: torch.dtype | None) -> None:
    """out += a @ b in out's dtype (operands in the matmul dtype under bf16 autocast)."""
    if mm is not None and out.dtype == torch.float32:
        out.add_(mm_float32(a.to(mm), b.to(mm)))
    else:
        out.addmm_(a.to(out.dtype), b.to(out.dtype))


@dataclass
class RediOutput:
    """One micro-batch's REDI sums, each already divided by the step's global pair count."""

    value: Tensor  # sum over pairs of the loss: differentiable
    correct: Tensor  # sum over correct rows of log pi(y+) / |y+| (no grad)
    incorrect: Tensor  # sum over incorrect rows of log pi(y-) / |y-| (no grad)


def redi_loss(
    hidden: Tensor,
    head: Head,
    labels: Tensor,
    row_of: Tensor,
    role: Tensor,
    alpha: float,
    pairs: Tensor | float,
    vocab_size: int,
    block_rows: int | None = None,
) -> RediOutput:
    """REDI over a micro-batch's target tokens.

    `hidden` `[N, H]` and `labels` `[N]`: every target token of the batch's rows (position
    t - 1 predicting token t); `row_of` `[N]`: each token's row; `role` `[B]`: each row's
    `CORRECT`, `INCORRECT` or `UNPAIRED` (its tokens are skipped); `pairs`: the step's global
    pair count (clamped to at least 1), so micro-batches and ranks add up to one big batch.
    """
    rows = role.shape[0]
    role = role.to(row_of.device)
    length = torch.bincount(row_of, minlength=rows).clamp(min=1).to(torch.float64)
    pos, neg = role == CORRECT, role == INCORRECT
    if not torch.is_tensor(pairs):
        pairs = torch.tensor(float(pairs), device=hidden.device)
    count = pairs.to(torch.float64).clamp(min=1.0).to(row_of.device)
    coef = torch.where(pos, -1.0 / length, torch.where(neg, alpha / length, 0.0)) / count
    live = (pos | neg)[row_of]
    token_rows = row_of[live]
    value, logp = weighted_logp(
        hidden[live],
        head,
        labels[live],
        coef[token_rows].to(compute_dtype(hidden)),
        vocab_size,
        block_rows,
    )
    per_row = torch.zeros(rows, dtype=torch.float64, device=row_of.device)
    per_row.index_add_(0, token_rows, logp.detach().to(torch.float64))
    mean = per_row / length / count
    correct = mean[pos].sum().to(value.dtype)
    incorrect = mean[neg].sum().to(value.dtype)
    return RediOutput(value, correct, incorrect)

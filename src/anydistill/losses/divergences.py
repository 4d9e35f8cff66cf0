"""Token-level divergences between a teacher p and a student q, written once on log-probs.

Every function takes `student_logp` (log q) and `teacher_logp` (log p), both `[N, V]` float
tensors that are already log-softmax'ed (entries may be `-inf` for masked vocabulary), and
returns the per-token value `[N]` (the vocabulary dimension reduced). Temperature and its T**2
factor are applied by the caller (the loss engine), not here. Which kinds exist, with which
parameters, is `anydistill.losses.registry` (its `divergence` dispatches by name).

Numerical safety: `0 * log 0 = 0` is enforced with where-guards *before* any multiplication,
so neither the value nor the gradient becomes NaN when an entry is `-inf` in one or both
distributions or when logits are extreme (|logit| ~ 1e4). A KL whose second argument puts zero
mass where the first has mass is `+inf` (mathematically correct), never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NEG_INF = float("-inf")


def _kl(a_logp: Tensor, b_logp: Tensor) -> Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v) per row, with 0 * log 0 = 0."""
    a = a_logp.exp()
    # Guard on a_v == 0 (also catches underflow at logits ~ -1e4, where log b may be -inf).
    # It is applied to the difference, not the product: where's backward then sends a zero
    # gradient through a subtraction, never 0 * nan through a multiplication.
    diff = torch.where(a == 0, torch.zeros_like(a_logp), a_logp - b_logp)
    return (a * diff).sum(dim=-1)


def _log_mix(a_logp: Tensor, b_logp: Tensor, wa: float, wb: float) -> Tensor:
    """log(wa * exp(a) + wb * exp(b)) element-wise: a two-term logsumexp of log(w) + x.

    Written out instead of `torch.logsumexp` because the latter's backward is NaN where both
    inputs are `-inf` (exp(-inf - -inf)); here those entries are -inf with zero gradient.
    A zero weight drops its term exactly (skl with alpha = 0 is then exactly forward KL).
    """
    if wa == 0.0:
        return b_logp + math.log(wb)
    if wb == 0.0:
        return a_logp + math.log(wa)
    a = a_logp + math.log(wa)
    b = b_logp + math.log(wb)
    top = torch.maximum(a, b)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = (a - top).exp() + (b - top).exp()  # >= 1 unless both are -inf
    positive = total > 0
    safe = torch.where(positive, total, torch.ones_like(total))
    return torch.where(positive, top + safe.log(), torch.full_like(total, NEG_INF))


def forward_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Forward KL(p || q): mass-covering; the classic KD objective (Hinton et al. 2015)."""
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Reverse KL(q || p): mode-seeking (MiniLLM, Gu et al. 2024)."""
    return _kl(student_logp, teacher_logp)


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float = 0.5) -> Tensor:
    """Generalized Jensen-Shannon divergence JSD(beta), TRL GKD convention.

    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (ICLR), as implemented by TRL's `GKDTrainer`:

        m   = beta * p + (1 - beta) * q
        JSD = beta * KL(p || m) + (1 - beta) * KL(q || m)

    The endpoints are special-cased as TRL does: `beta == 0` returns forward KL(p || q) and
    `beta == 1` returns reverse KL(q || p). (The formula itself tends to 0 at both ends, so
    this is a convention, not a limit.) The mixture is formed in log space.
    """
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    mix = _log_mix(teacher_logp, student_logp, beta, 1.0 - beta)
    return beta * _kl(teacher_logp, mix) + (1.0 - beta) * _kl(student_logp, mix)


def total_variation(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Total variation distance 0.5 * sum_v |p_v - q_v| (in [0, 1])."""
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(dim=-1)


def skew_forward_kl(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.1) -> Tensor:
    """DistiLLM skew KL: SKL^(alpha)(p, q) = KL(p || alpha * p + (1 - alpha) * q).

    Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models"
    (ICML), the alpha-skew KL (the paper's default alpha = 0.1). `alpha = 0` is forward KL;
    the gradient flows through q inside the mixture, as in the reference implementation.
    """
    mix = _log_mix(teacher_logp, student_logp, alpha, 1.0 - alpha)
    return _kl(teacher_logp, mix)


def skew_reverse_kl(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.1) -> Tensor:
    """DistiLLM skew reverse KL: SRKL^(alpha)(p, q) = KL(q || (1 - alpha) * p + alpha * q).

    Ko et al. 2024 (ICML), the alpha-skew reverse KL. `alpha = 0` is reverse KL.
    """
    mix = _log_mix(teacher_logp, student_logp, 1.0 - alpha, alpha)
    return _kl(student_logp, mix)


def taid_target(student_logp: Tensor, teacher_logp: Tensor, t: float) -> Tensor:
    """TAID's interpolated target log p_t (no gradient to the student).

    Shing et al. 2025, "TAID: Temporally Adaptive Interpolated Distillation for Efficient
    Knowledge Transfer in Language Models" (ICLR), the time-dependent intermediate
    distribution (as in the authors' code, SakanaAI's TAID repository):

        p_t = softmax((1 - t) * stopgrad(logit_q) + t * logit_p)

    Computed on log-probs, which is identical because softmax is shift-invariant per row.
    The endpoints are taken exactly so that 0 * (-inf) never appears.
    """
    q = student_logp.detach()
    if t >= 1.0:
        return teacher_logp
    if t <= 0.0:
        return q
    return torch.log_softmax((1.0 - t) * q + t * teacher_logp, dim=-1)


def taid_kl(student_logp: Tensor, teacher_logp: Tensor, taid_t: float = 1.0) -> Tensor:
    """TAID loss KL(p_t || q) with the interpolated target `taid_target` (Shing et al. 2025).

    At t = 1 this is forward KL; `taid_t` comes from `anydistill.losses.taid.TaidSchedule`.
    """
    return _kl(taid_target(student_logp, teacher_logp, taid_t), student_logp)


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy -sum_v p_v log p_v per row, with 0 * log 0 = 0."""
    p = logp.exp()
    safe = torch.where(p == 0, torch.zeros_like(logp), logp)
    return -(p * safe).sum(dim=-1)

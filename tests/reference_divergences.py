"""Float64 reference for the divergences and the loss, written the plainest way possible.

Everything goes through explicit float64 probabilities p = softmax(teacher_logits / T) and
q = softmax(student_logits / T), and sums of p * (log p - log r) with 0 * log 0 = 0. Logs
(log p, log q and the mixtures' log) come from float64 log_softmax / logsumexp, so values stay
exact where a probability underflows (logits of +-1e4).
It shares no code with `anydistill.losses`, so agreement is a real check.
"""

from __future__ import annotations

import torch

F64 = torch.float64


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) in float64 (exact even where the probability underflows)."""
    return torch.log_softmax(logits.to(F64) / temperature, dim=-1)


def kl(a: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v (log a_v - log b_v) per row; terms with a_v = 0 count as 0."""
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(a))  # keeps 0 * inf out of grads
    return (a * diff).sum(-1)


def log_mixture(wa: float, log_a: torch.Tensor, wb: float, log_b: torch.Tensor) -> torch.Tensor:
    """log(wa * a + wb * b) via float64 logsumexp (a weight of 0 gives log 0 = -inf)."""
    la = log_a + torch.log(torch.tensor(wa, dtype=F64))
    lb = log_b + torch.log(torch.tensor(wb, dtype=F64))
    return torch.logsumexp(torch.stack([la, lb]), dim=0)


def ref_divergence(
    kind: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    taid_t: float = 1.0,
) -> torch.Tensor:
    """Per-token divergence with temperature T applied to both and the T**2 factor."""
    lq = log_probs(student_logits, temperature)
    lp = log_probs(teacher_logits, temperature)
    q, p = lq.exp(), lp.exp()
    if kind == "fkl":
        value = kl(p, lp, lq)
    elif kind == "rkl":
        value = kl(q, lq, lp)
    elif kind == "jsd":
        if beta == 0.0:
            value = kl(p, lp, lq)
        elif beta == 1.0:
            value = kl(q, lq, lp)
        else:
            lm = log_mixture(beta, lp, 1 - beta, lq)
            value = beta * kl(p, lp, lm) + (1 - beta) * kl(q, lq, lm)
    elif kind == "tvd":
        value = 0.5 * (p - q).abs().sum(-1)
    elif kind == "skl":
        value = kl(p, lp, log_mixture(alpha, lp, 1 - alpha, lq))
    elif kind == "srkl":
        value = kl(q, lq, log_mixture(1 - alpha, lp, alpha, lq))
    elif kind == "taid":
        # Interpolate the (tempered) logits themselves, with the student's side detached.
        zs = student_logits.to(F64).detach() / temperature
        zt = teacher_logits.to(F64) / temperature
        log_target = torch.log_softmax((1 - taid_t) * zs + taid_t * zt, dim=-1)
        value = kl(log_target.exp(), log_target, lq)
    else:
        raise ValueError(kind)
    return value * temperature**2


def ref_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    vocab_size: int,
    scale: float = 1.0,
    cap: float | None = None,
) -> torch.Tensor:
    """Full logits in float64, padded rows computed and then cut off (like a real model)."""
    z = hidden.to(F64) @ weight.to(F64).T
    if bias is not None:
        z = z + bias.to(F64)
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return z[:, :vocab_size]


def ref_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    mask: torch.Tensor,
    terms: list[dict],
    normalizer: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """sum_k w_k * sum_{masked tokens} value_k / normalizer, plus unweighted per-term values."""
    total = torch.zeros((), dtype=F64)
    values = {}
    for term in terms:
        if term["kind"] == "ce":
            lq = log_probs(student_logits)
            keep = mask & (labels != -100)
            summed = -lq[keep, labels[keep]].sum()
        else:
            per_token = ref_divergence(
                term["kind"],
                student_logits,
                teacher_logits,
                temperature=term.get("temperature", 1.0),
                beta=term.get("beta", 0.5),
                alpha=term.get("alpha", 0.1),
                taid_t=term.get("taid_t", 1.0),
            )
            summed = per_token[mask].sum()
        values[term["name"]] = summed / normalizer
        total = total + term["weight"] * summed / normalizer
    return total, values


def ref_stats(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    mask: torch.Tensor,
) -> dict[str, float]:
    """The engine's stats (sums over masked tokens) at T = 1."""
    lq = log_probs(student_logits)[mask]
    q = lq.exp()
    zero = torch.zeros_like(q)
    out = {"tokens": float(mask.sum())}
    out["student_entropy"] = float(-kl(q, lq, zero).sum())
    if teacher_logits is not None:
        lp = log_probs(teacher_logits)[mask]
        p = lp.exp()
        out["fkl"] = float(kl(p, lp, lq).sum())
        out["teacher_entropy"] = float(-kl(p, lp, zero).sum())
        out["agree"] = float((q.argmax(-1) == p.argmax(-1)).sum())
    if labels is not None:
        keep = labels[mask] != -100
        out["student_nll"] = float(-lq[keep, labels[mask][keep]].sum())
        if teacher_logits is not None:
            lp = log_probs(teacher_logits)[mask]
            out["teacher_nll"] = float(-lp[keep, labels[mask][keep]].sum())
    return out

"""The one loss entry point the trainer calls: hidden states + heads in, weighted loss out.

The engine projects hidden states through the output heads itself, so full `[tokens, vocab]`
logits never have to exist for the whole batch:

- `naive`: all selected rows at once (the readable reference and fallback);
- `torch`: `chunk_size` rows at a time, each chunk under non-reentrant activation
  checkpointing, so only one chunk's `[chunk, V]` logits are alive in forward *and* backward.

Both run the same per-chunk function, in float32 with autocast disabled, on the logits sliced
to the tokenizer's real vocabulary (`vocab_size`), so heads padded to different row counts
(e.g. Qwen2.5-7B's 152064 rows vs 0.5B's 151936) compare the same distributions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from anydistill.losses.divergences import divergence, entropy, forward_kl
from anydistill.losses.objective import ActiveTerm

ENGINES = ("naive", "torch")
IGNORE_INDEX = -100


@dataclass
class Head:
    """An output layer: logits = softcap(logit_scale * (h @ weight.T + bias))."""

    weight: Tensor  # [V_rows, H]; V_rows may exceed the real vocabulary (padded heads)
    bias: Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None  # Gemma-style final_logit_softcapping: cap * tanh(x / cap)


@dataclass
class TeacherSignal:
    """An online teacher: its final hidden states (no grad) and its output head.

    A sparse top-k variant (cached / remote teachers) will sit beside this one.
    """

    hidden: Tensor  # [N, Ht], rows aligned with the student's rows
    head: Head


@dataclass
class LossOutput:
    """What one call returns; all sums are over the selected (mask == True) tokens."""

    loss: Tensor  # scalar with grad: sum_k weight_k * term_sum_k / normalizer
    terms: dict[str, Tensor]  # detached: unweighted term_sum_k / normalizer, per term name
    stats: dict[str, Tensor]  # detached sums: tokens, fkl, agree, *_entropy, student_nll


@dataclass(frozen=True)
class _Plan:
    """Everything the per-chunk function needs besides tensors."""

    terms: tuple[ActiveTerm, ...]
    vocab_size: int
    student_scale: float
    student_cap: float | None
    teacher_scale: float
    teacher_cap: float | None
    stat_names: tuple[str, ...]


def _project(h: Tensor, weight: Tensor, bias: Tensor | None, scale: float, cap: float | None,
             vocab_size: int) -> Tensor:
    # Slicing the weight rows is the same as slicing the logits, minus the wasted columns.
    logits = h.float() @ weight[:vocab_size].float().T
    if bias is not None:
        logits = logits + bias[:vocab_size].float()
    if scale != 1.0:
        logits = logits * scale
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _chunk_sums(
    plan: _Plan,
    s_hidden: Tensor,
    s_weight: Tensor,
    s_bias: Tensor | None,
    t_hidden: Tensor | None,
    t_weight: Tensor | None,
    t_bias: Tensor | None,
    labels: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Per-term sums `[K]` (with grad) and stats sums `[S]` (detached) for a block of rows."""
    # The trainer runs under autocast; the loss math must stay float32 regardless.
    with torch.autocast(device_type=s_hidden.device.type, enabled=False):
        zs = _project(s_hidden, s_weight, s_bias, plan.student_scale, plan.student_cap,
                      plan.vocab_size)
        zt = None
        if t_hidden is not None and t_weight is not None:
            with torch.no_grad():
                zt = _project(t_hidden, t_weight, t_bias, plan.teacher_scale, plan.teacher_cap,
                              plan.vocab_size)
        s_logp: dict[float, Tensor] = {}
        t_logp: dict[float, Tensor] = {}

        def student(temp: float) -> Tensor:
            if temp not in s_logp:
                s_logp[temp] = torch.log_softmax(zs if temp == 1.0 else zs / temp, dim=-1)
            return s_logp[temp]

        def teacher(temp: float) -> Tensor:
            assert zt is not None
            if temp not in t_logp:
                with torch.no_grad():
                    t_logp[temp] = torch.log_softmax(zt if temp == 1.0 else zt / temp, dim=-1)
            return t_logp[temp]

        values = []
        for term in plan.terms:
            if term.kind == "ce":
                assert labels is not None
                value = F.cross_entropy(zs, labels, ignore_index=IGNORE_INDEX, reduction="sum")
            else:
                temp = term.temperature
                per_token = divergence(term.kind, student(temp), teacher(temp), beta=term.beta,
                                       alpha=term.alpha, taid_t=term.taid_t)
                value = per_token.sum() * (temp * temp)
            values.append(value)
        sums = torch.stack(values)

        with torch.no_grad():
            lq = student(1.0).detach()
            stats = {"tokens": zs.new_tensor(float(zs.shape[0])), "student_entropy":
                     entropy(lq).sum()}
            if zt is not None:
                lp = teacher(1.0)
                stats["fkl"] = forward_kl(lq, lp).sum()
                stats["agree"] = (zs.argmax(dim=-1) == zt.argmax(dim=-1)).sum().float()
                stats["teacher_entropy"] = entropy(lp).sum()
            if labels is not None:
                stats["student_nll"] = F.cross_entropy(
                    zs.detach(), labels, ignore_index=IGNORE_INDEX, reduction="sum"
                )
            stat_vec = torch.stack([stats[k] for k in plan.stat_names])
    return sums, stat_vec


def _check_head(head: Head, vocab_size: int, who: str) -> None:
    rows = head.weight.shape[0]
    if rows < vocab_size:
        raise ValueError(f"the {who} head has {rows} rows but vocab_size is {vocab_size}; "
                         "pass the tokenizer's vocabulary size")


def _validate(student_hidden: Tensor, student_head: Head, teacher: TeacherSignal | None,
              labels: Tensor | None, mask: Tensor, terms: list[ActiveTerm], vocab_size: int,
              engine: str, chunk_size: int) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown loss engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not terms:
        raise ValueError("distill_loss needs at least one term")
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"term names must be unique, got {names}")
    for term in terms:
        if term.kind != "ce" and teacher is None:
            raise ValueError(f"term {term.name!r} ({term.kind}) needs a teacher signal, "
                             "but none was given")
        if term.kind == "ce" and labels is None:
            raise ValueError(f"term {term.name!r} (ce) needs labels, but none were given")
    n = student_hidden.shape[0]
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape [{n}], got {list(mask.shape)}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
    _check_head(student_head, vocab_size, "student")
    if teacher is not None:
        if teacher.hidden.shape[0] != n:
            raise ValueError(f"teacher hidden has {teacher.hidden.shape[0]} rows, "
                             f"the student has {n}")
        _check_head(teacher.head, vocab_size, "teacher")


def distill_loss(
    student_hidden: Tensor,
    student_head: Head,
    teacher: TeacherSignal | None,
    labels: Tensor | None,
    mask: Tensor,
    terms: list[ActiveTerm],
    vocab_size: int,
    normalizer: float | Tensor,
    engine: str = "torch",
    chunk_size: int = 1024,
) -> LossOutput:
    """Weighted distillation loss over the rows where `mask` is True.

    `student_hidden` is `[N, Hs]`, already shifted and flattened (row i predicts `labels[i]`);
    `teacher.hidden` is `[N, Ht]`. `normalizer` is the global number of loss tokens across
    gradient accumulation and ranks, so `loss = sum_k w_k * sum_tokens(value_k) / normalizer`
    (not a per-micro-batch mean). A NaN/inf loss is returned, not raised: `terms` holds every
    term's value so the caller can name the culprit.
    """
    _validate(student_hidden, student_head, teacher, labels, mask, terms, vocab_size, engine,
              chunk_size)
    has_teacher = teacher is not None
    stat_names = ("tokens", "student_entropy")
    if has_teacher:
        stat_names += ("fkl", "agree", "teacher_entropy")
    if labels is not None:
        stat_names += ("student_nll",)
    t_head = teacher.head if teacher is not None else None
    plan = _Plan(
        terms=tuple(terms),
        vocab_size=vocab_size,
        student_scale=float(student_head.logit_scale),
        student_cap=student_head.softcap,
        teacher_scale=float(t_head.logit_scale) if t_head is not None else 1.0,
        teacher_cap=t_head.softcap if t_head is not None else None,
        stat_names=stat_names,
    )
    fn = functools.partial(_chunk_sums, plan)

    # Only selected rows are ever projected.
    rows = mask.nonzero(as_tuple=True)[0]
    hs = student_hidden.index_select(0, rows)
    ht = teacher.hidden.detach().index_select(0, rows) if teacher is not None else None
    y = labels.index_select(0, rows) if labels is not None else None
    s_w, s_b = student_head.weight, student_head.bias
    t_w = t_head.weight.detach() if t_head is not None else None
    t_b = t_head.bias.detach() if t_head is not None and t_head.bias is not None else None

    if engine == "naive":
        sums, stat_vec = fn(hs, s_w, s_b, ht, t_w, t_b, y)
    else:
        n = hs.shape[0]
        grad = torch.is_grad_enabled() and (
            hs.requires_grad or s_w.requires_grad or (s_b is not None and s_b.requires_grad)
        )
        parts = []
        for start in range(0, max(n, 1), chunk_size):
            end = start + chunk_size
            args = (hs[start:end], s_w, s_b,
                    None if ht is None else ht[start:end], t_w, t_b,
                    None if y is None else y[start:end])
            # Checkpointing keeps only the chunk's inputs; logits are rebuilt in backward.
            parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
        sums = torch.stack([p[0] for p in parts]).sum(dim=0)
        stat_vec = torch.stack([p[1] for p in parts]).sum(dim=0)

    weights = torch.tensor([t.weight for t in terms], dtype=sums.dtype, device=sums.device)
    # A zero weight must silence its term even when that term is inf/NaN (0 * inf = NaN).
    weighted = torch.where(weights != 0, sums * weights, torch.zeros_like(sums))
    loss = weighted.sum() / normalizer
    detached = sums.detach()
    term_values = {t.name: detached[k] / normalizer for k, t in enumerate(terms)}
    stats = {name: stat_vec[k].detach() for k, name in enumerate(stat_names)}
    return LossOutput(loss=loss, terms=term_values, stats=stats)

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

import contextlib
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
    stats: dict[str, Tensor]  # detached sums: tokens, fkl, agree, *_entropy, *_nll


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


def _project(
    h: Tensor, weight: Tensor, bias: Tensor | None, scale: float, cap: float | None, vocab_size: int
) -> Tensor:
    # Slicing the weight rows is the same as slicing the logits, minus the wasted columns.
    logits = h.float() @ weight[:vocab_size].float().T
    if bias is not None:
        logits = logits + bias[:vocab_size].float()
    if scale != 1.0:
        logits = logits * scale
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return logits


class _LogProbs:
    """log_softmax(logits / T), computed once per distinct temperature within a chunk."""

    def __init__(self, logits: Tensor, grad: bool) -> None:
        self.logits = logits
        self.grad = grad
        self._cache: dict[float, Tensor] = {}

    def __call__(self, temp: float) -> Tensor:
        if temp not in self._cache:
            with contextlib.nullcontext() if self.grad else torch.no_grad():
                z = self.logits if temp == 1.0 else self.logits / temp
                self._cache[temp] = torch.log_softmax(z, dim=-1)
        return self._cache[temp]


def _term_sum(
    term: ActiveTerm, student: _LogProbs, teacher: _LogProbs | None, labels: Tensor | None
) -> Tensor:
    """Sum over the chunk's rows of one term's per-token value (T**2 included)."""
    temp = 1.0 if term.kind == "ce" else term.temperature
    lq = student(temp)  # built with grad even when this term is evaluated without
    # A zero-weight term is only reported: without a graph, its NaNs (if any) cannot leak
    # into the gradient as 0 * NaN.
    with torch.no_grad() if term.weight == 0 else contextlib.nullcontext():
        if term.kind == "ce":
            assert labels is not None
            return F.nll_loss(lq, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        assert teacher is not None
        per_token = divergence(
            term.kind, lq, teacher(temp), beta=term.beta, alpha=term.alpha, taid_t=term.taid_t
        )
        return per_token.sum() * (temp * temp)


@torch.no_grad()
def _stats(
    plan: _Plan, student: _LogProbs, teacher: _LogProbs | None, labels: Tensor | None
) -> Tensor:
    """Detached monitoring sums at T = 1, in the order of `plan.stat_names`."""
    lq = student(1.0).detach()
    stats = {"tokens": lq.new_tensor(float(lq.shape[0])), "student_entropy": entropy(lq).sum()}
    if teacher is not None:
        lp = teacher(1.0)
        stats["fkl"] = forward_kl(lq, lp).sum()
        agree = student.logits.argmax(dim=-1) == teacher.logits.argmax(dim=-1)
        stats["agree"] = agree.sum().float()
        stats["teacher_entropy"] = entropy(lp).sum()
    if labels is not None:
        nll = functools.partial(F.nll_loss, ignore_index=IGNORE_INDEX, reduction="sum")
        stats["student_nll"] = nll(lq, labels)
        if teacher is not None:  # the teacher's own loss, from the logits already built
            stats["teacher_nll"] = nll(lp, labels)
    return torch.stack([stats[k] for k in plan.stat_names])


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
        zs = _project(
            s_hidden, s_weight, s_bias, plan.student_scale, plan.student_cap, plan.vocab_size
        )
        student = _LogProbs(zs, grad=True)
        teacher = None
        if t_hidden is not None and t_weight is not None:
            with torch.no_grad():
                zt = _project(
                    t_hidden,
                    t_weight,
                    t_bias,
                    plan.teacher_scale,
                    plan.teacher_cap,
                    plan.vocab_size,
                )
            teacher = _LogProbs(zt, grad=False)
        sums = torch.stack([_term_sum(t, student, teacher, labels) for t in plan.terms])
        return sums, _stats(plan, student, teacher, labels)


def _check_head(head: Head, vocab_size: int, who: str) -> None:
    rows = head.weight.shape[0]
    if rows < vocab_size:
        raise ValueError(
            f"the {who} head has {rows} rows but vocab_size is {vocab_size}; "
            "pass the tokenizer's vocabulary size"
        )


def _validate(
    student_hidden: Tensor,
    student_head: Head,
    teacher: TeacherSignal | None,
    labels: Tensor | None,
    mask: Tensor,
    terms: list[ActiveTerm],
    vocab_size: int,
    engine: str,
    chunk_size: int,
) -> None:
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
            raise ValueError(
                f"term {term.name!r} ({term.kind}) needs a teacher signal, but none was given"
            )
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
            raise ValueError(
                f"teacher hidden has {teacher.hidden.shape[0]} rows, the student has {n}"
            )
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
    _validate(
        student_hidden, student_head, teacher, labels, mask, terms, vocab_size, engine, chunk_size
    )
    has_teacher = teacher is not None
    stat_names = ("tokens", "student_entropy")
    if has_teacher:
        stat_names += ("fkl", "agree", "teacher_entropy")
    if labels is not None:
        stat_names += ("student_nll",)
        if has_teacher:
            stat_names += ("teacher_nll",)
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
            args = (
                hs[start:end],
                s_w,
                s_b,
                None if ht is None else ht[start:end],
                t_w,
                t_b,
                None if y is None else y[start:end],
            )
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

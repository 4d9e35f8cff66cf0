"""The loss math on one block of logits: term sums, monitoring stats and d(loss)/d(logits).

Every engine projects hidden states into logits block by block and hands each block here
(or to the Triton kernel that computes the same three things in fused passes). All math is
float32 on logits already sliced to the real vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from anydistill.losses import registry
from anydistill.losses.divergences import entropy, forward_kl
from anydistill.losses.objective import ActiveTerm
from anydistill.losses.sparse import SparseTarget

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Plan:
    """Everything the per-block math needs besides tensors."""

    terms: tuple[ActiveTerm, ...]
    vocab_size: int
    student_scale: float
    student_cap: float | None
    teacher_scale: float
    teacher_cap: float | None
    stat_names: tuple[str, ...]
    # The head matmuls' operand dtype (bf16 under bf16 autocast), accumulated in float32;
    # None: the compute dtype (float32, or float64 for references).
    matmul_dtype: torch.dtype | None = None


def compute_dtype(h: Tensor) -> torch.dtype:
    """float32 math for float32 and lower inputs; float64 inputs (references) stay float64."""
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def project(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    vocab_size: int,
    matmul_dtype: torch.dtype | None = None,
) -> Tensor:
    """Raw float32 logits `h @ weight[:V].T + bias[:V]` without upcasting the weight copy.

    Slicing the weight rows is the same as slicing the logits, minus the wasted columns.
    With `matmul_dtype` (bf16 under bf16 autocast) both operands are multiplied in that dtype
    with float32 output (on CUDA: accumulated in float32, written once in float32), as
    autocast does for the model's own matmuls. On CUDA, bf16/fp16 operands multiply with
    float32 output in any case (no [V, H] float32 copy).
    """
    w = weight[:vocab_size]
    dtype = compute_dtype(h)
    if matmul_dtype is not None and dtype == torch.float32:
        logits = mm_float32(h.to(matmul_dtype), w.to(matmul_dtype).T)
    elif h.is_cuda and h.dtype in (torch.bfloat16, torch.float16) and w.dtype == h.dtype:
        logits = torch.mm(h, w.T, out_dtype=torch.float32)
    else:
        logits = h.to(dtype) @ w.to(dtype).T
    if bias is not None:
        logits = logits + bias[:vocab_size].to(dtype)
    return logits


def mm_float32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b of low-precision operands as float32: accumulated in float32 on CUDA; on CPU
    (no float32-output kernel) the product is rounded to the operands' dtype first."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return (a @ b).float()


def matmul_dtype(device: torch.device, inputs: Tensor) -> torch.dtype | None:
    """The head matmuls' dtype: autocast's, when it is on with a 16-bit dtype and the loss
    is not a float64 reference; else None (the compute dtype)."""
    if inputs.dtype == torch.float64 or not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def transform(raw: Tensor, scale: float, cap: float | None) -> Tensor:
    """softcap(scale * raw): the head's final logits (Gemma-style soft-capping)."""
    z = raw * scale if scale != 1.0 else raw
    return cap * torch.tanh(z / cap) if cap is not None else z


def head_logits(h: Tensor, head, vocab_size: int) -> Tensor:
    """Final float32 logits of rows `h` through a `Head` (bias, scale, soft-cap included), for
    the no-grad callers that walk rows block by block (eval, selection, the cache writer)."""
    return transform(project(h, head.weight, head.bias, vocab_size), head.logit_scale, head.softcap)


def transform_backward(grad: Tensor, final: Tensor, scale: float, cap: float | None) -> Tensor:
    """d/d raw from d/d final, in place on `grad`: tanh' = 1 - (final / cap)**2."""
    if cap is not None:
        grad.mul_(1.0 - (final / cap).square())
    if scale != 1.0:
        grad.mul_(scale)
    return grad


class LogProbs:
    """log_softmax(logits / T), computed once per distinct temperature within a block."""

    def __init__(self, logits: Tensor, grad: bool) -> None:
        self.logits = logits
        self.grad = grad
        self._cache: dict[float, Tensor] = {}

    def __call__(self, temp: float) -> Tensor:
        # Whatever grad mode the caller is in, the cached copy has a graph iff `grad`: one
        # built under a zero-weight term's no_grad must not reach a weighted term.
        if temp not in self._cache:
            with torch.enable_grad() if self.grad else torch.no_grad():
                z = self.logits if temp == 1.0 else self.logits / temp
                self._cache[temp] = torch.log_softmax(z, dim=-1)
        return self._cache[temp]


@dataclass(frozen=True)
class MixtureTarget:
    """Several dense teachers on one block (`engine.MixtureSignal`): each member's final
    logits and its normalized log weight."""

    names: tuple[str, ...]
    log_weights: tuple[float, ...]
    logits: tuple[Tensor, ...]


class MixtureLogProbs(LogProbs):
    """log sum_i w_i softmax(z_i / T): each member tempered by T, then mixed; computed once
    per distinct temperature, as `logsumexp_i(log w_i + log_softmax(z_i / T))` (pairwise, so
    no [members, rows, V] stack). `logits` are the mixture's log-probs at T = 1 (its argmax is
    the mixture's)."""

    def __init__(self, target: MixtureTarget) -> None:  # not LogProbs.__init__: no own logits
        self.names = target.names
        self.log_weights = target.log_weights
        self.members = tuple(LogProbs(z, grad=False) for z in target.logits)
        self.grad = False
        self._cache: dict[float, Tensor] = {}

    @property
    def logits(self) -> Tensor:  # type: ignore[override]
        return self(1.0)

    def __call__(self, temp: float) -> Tensor:
        if temp not in self._cache:
            with torch.no_grad():
                mixed: Tensor | None = None
                for log_w, member in zip(self.log_weights, self.members, strict=True):
                    part = member(temp) + log_w
                    mixed = part if mixed is None else torch.logaddexp(mixed, part)
                assert mixed is not None
                self._cache[temp] = mixed
        return self._cache[temp]


Teacher = LogProbs | SparseTarget


def term_sum(
    term: ActiveTerm, student: LogProbs, teacher: Teacher | None, labels: Tensor | None
) -> Tensor:
    """Sum over the block's rows of one term's per-token value (T**2 included)."""
    ce = registry.get(term.kind).family == "ce"
    temp = 1.0 if ce else term.temperature
    # The student's log-probs (dense, or collapsed onto a sparse teacher's outcomes) are
    # cached for the block's later terms, so they are built with grad even when this term is
    # evaluated without.
    lq = student(temp)
    if isinstance(teacher, SparseTarget) and not ce:
        lq = teacher.student(lq, temp)  # both sides on the cached k + 1 outcomes
    # A zero-weight term is only reported: without a graph, its NaNs (if any) cannot leak
    # into the gradient as 0 * NaN.
    with torch.no_grad() if term.weight == 0 else contextlib.nullcontext():
        if ce:
            assert labels is not None
            return F.nll_loss(lq, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        assert teacher is not None
        lp = teacher.teacher(temp) if isinstance(teacher, SparseTarget) else teacher(temp)
        return registry.per_token(term, lq, lp).sum() * (temp * temp)


@torch.no_grad()
def block_stats(
    stat_names: Sequence[str], student: LogProbs, teacher: Teacher | None, labels: Tensor | None
) -> Tensor:
    """Detached monitoring sums at T = 1, in the order of `stat_names`."""
    lq = student(1.0).detach()
    stats = {"tokens": lq.new_tensor(float(lq.shape[0])), "student_entropy": entropy(lq).sum()}
    if isinstance(teacher, SparseTarget):  # on the cached outcomes; no teacher nll
        lp = teacher.teacher(1.0)
        stats["fkl"] = forward_kl(teacher.student(lq, 1.0), lp).sum()
        stats["agree"] = (student.logits.argmax(dim=-1) == teacher.argmax_ids()).sum().float()
        stats["teacher_entropy"] = entropy(lp).sum()
    elif teacher is not None:
        lp = teacher(1.0)
        stats["fkl"] = forward_kl(lq, lp).sum()
        agree = student.logits.argmax(dim=-1) == teacher.logits.argmax(dim=-1)
        stats["agree"] = agree.sum().float()
        stats["teacher_entropy"] = entropy(lp).sum()
    if isinstance(teacher, MixtureLogProbs):  # each member's own KL and agreement
        top = student.logits.argmax(dim=-1)
        for name, member in zip(teacher.names, teacher.members, strict=True):
            stats[f"teacher/{name}/kl"] = forward_kl(lq, member(1.0)).sum()
            stats[f"teacher/{name}/agree"] = (top == member.logits.argmax(-1)).sum().float()
            stats[f"teacher/{name}/tokens"] = stats["tokens"]
    if labels is not None:
        nll = functools.partial(F.nll_loss, ignore_index=IGNORE_INDEX, reduction="sum")
        stats["student_nll"] = nll(lq, labels)
        if isinstance(teacher, LogProbs):  # the teacher's own loss, from its logits
            stats["teacher_nll"] = nll(lp, labels)
    return torch.stack([stats[k] for k in stat_names])


def weighted_total(terms: Sequence[ActiveTerm], sums: Tensor) -> Tensor:
    """sum_k w_k * sums_k, where a zero weight silences its term even if it is inf/NaN."""
    weights = torch.tensor([t.weight for t in terms], dtype=sums.dtype, device=sums.device)
    return torch.where(weights != 0, sums * weights, torch.zeros_like(sums)).sum()


def block_sums(
    plan: Plan, zs: Tensor, zt: Tensor | SparseTarget | MixtureTarget | None, labels: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Per-term sums `[K]` (differentiable in `zs`) and stats `[S]` (detached).

    `zt` is the teacher's dense logits for the block, a mixture of dense teachers, or a
    sparse (cached) target.
    """
    student = LogProbs(zs, grad=torch.is_grad_enabled())
    teacher: Teacher | None
    if isinstance(zt, MixtureTarget):
        teacher = MixtureLogProbs(zt)
    else:
        teacher = LogProbs(zt, grad=False) if isinstance(zt, Tensor) else zt
    sums = torch.stack([term_sum(t, student, teacher, labels) for t in plan.terms])
    return sums, block_stats(plan.stat_names, student, teacher, labels)


def torch_rows(
    plan: Plan,
    zs: Tensor,
    zt: Tensor | SparseTarget | MixtureTarget | None,
    labels: Tensor | None,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Term sums, stats and d(weighted total)/d zs for one block, by autograd on the block."""
    if not want_grad:
        with torch.no_grad():
            sums, stats = block_sums(plan, zs, zt, labels)
        return sums, stats, None
    leaf = zs.detach().requires_grad_(True)
    with torch.enable_grad():
        sums, stats = block_sums(plan, leaf, zt, labels)
        total = weighted_total(plan.terms, sums)
    if total.requires_grad:
        (grad,) = torch.autograd.grad(total, leaf)
    else:  # every weight is zero: nothing to learn from this block
        grad = torch.zeros_like(leaf)
    return sums.detach(), stats, grad

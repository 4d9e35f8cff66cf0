"""The one loss entry point the trainer calls: hidden states + heads in, weighted loss out.

The engine projects hidden states through the output heads itself, so full `[tokens, vocab]`
logits never have to exist for the whole batch:

- `naive`: all selected rows at once through plain autograd (the readable reference);
- `torch`: blocks of `chunk_size` rows through `fused.fused_linear_distill`, which computes each
  block's gradient in the forward (by autograd on that block only) and folds it into dX/dW,
  so only one block's `[chunk, V]` logits are ever alive and each is built once;
- `triton`: the same blocks, with the per-row softmax / divergence / gradient work done by one
  fused Triton kernel (`anydistill.kernels.divergence_rows`) instead of several torch passes.
  The registry turns each term into the kernel's plain numbers (`registry.kernel_terms`). A
  block whose terms include a kind with no kernel launch (a registered divergence without a
  `kernel` function), and every block of a sparse (cached) teacher, is computed with the
  torch per-block math (`chunk_math.torch_rows`) instead: same values, no kernel.

The teacher is one online teacher (`TeacherSignal`), a top-k cache (`SparseTeacher`) or
several online teachers mixed token by token (`MixtureSignal`): p = sum_i w_i p_i, each
member tempered by the term's T before mixing. A mixture's blocks hold one `[chunk, V]`
block of logits per member and always go through the torch per-block math
(`chunk_math.MixtureLogProbs`), on every engine; a one-member mixture is that member exactly.

All engines run the same math (`chunk_math`) in float32 with autocast disabled, on the logits
sliced to the tokenizer's real vocabulary (`vocab_size`), so heads padded to different row
counts (e.g. Qwen2.5-7B's 152064 rows vs 0.5B's 151936) compare the same distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from anydistill.losses import registry
from anydistill.losses.chunk_math import (
    MixtureTarget,
    Plan,
    block_sums,
    compute_dtype,
    matmul_dtype,
    project,
    torch_rows,
    transform,
    weighted_total,
)
from anydistill.losses.fused import RowsFn, fused_linear_distill
from anydistill.losses.objective import ActiveTerm
from anydistill.losses.sparse import TAIL_MODES, SparseTarget, SparseTeacher, refusal
from anydistill.models.heads import Head

ENGINES = ("naive", "torch", "triton")
# Elements of one [chunk, V] float32 block when chunk_size is left to the engine: 16 MiB on
# CPU keeps the torch engine's peak a small fraction of the naive one; GPUs want bigger
# matmuls (256 MiB blocks: 512 rows at V = 128k).
_AUTO_BLOCK_ELEMS = {"cpu": 2**22, "cuda": 2**26}


@dataclass
class TeacherSignal:
    """An online teacher: its final hidden states (no grad) and its output head.

    Its sparse sibling is `SparseTeacher` (top-k from an offline cache).
    """

    hidden: Tensor  # [N, Ht], rows aligned with the student's rows
    head: Head
    features: Any = None  # teachers.base.Features: layer activations a term asked for


@dataclass
class MixtureSignal:
    """Several online teachers on the same rows, mixed token by token over one vocabulary:
    p_T = sum_i w_i softmax(z_i / T). Each member is tempered by the term's temperature
    before mixing (a mixture of tempered teachers, not a tempered mixture). Weights must be
    > 0 (drop a weight-0 teacher before building one); they are normalized to sum 1 here.
    The stats add `teacher/<name>/kl` (KL(p_i || q) at T = 1), `/agree` and `/tokens` per
    member."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    signals: tuple[TeacherSignal, ...]

    def log_weights(self) -> tuple[float, ...]:
        total = math.fsum(self.weights)
        return tuple(math.log(w / total) for w in self.weights)


def member_stats(name: str, stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """One teacher's own `teacher/<name>/{kl,agree,tokens}` from a single teacher's stats."""
    return {
        f"teacher/{name}/kl": stats["fkl"],
        f"teacher/{name}/agree": stats["agree"],
        f"teacher/{name}/tokens": stats["tokens"],
    }


@dataclass
class LossOutput:
    """What one call returns; all sums are over the selected (mask == True) tokens."""

    loss: Tensor  # scalar with grad: sum_k weight_k * term_sum_k / normalizer
    terms: dict[str, Tensor]  # detached: unweighted term_sum_k / normalizer, per term name
    stats: dict[str, Tensor]  # detached sums: tokens, fkl, agree, *_entropy, *_nll


def auto_chunk_size(vocab_size: int, device: torch.device) -> int:
    """Rows per block so that one float32 `[rows, V]` block stays near the device's budget."""
    budget = _AUTO_BLOCK_ELEMS.get(device.type, _AUTO_BLOCK_ELEMS["cpu"])
    return max(16, budget // max(vocab_size, 1))


def _kernel() -> ModuleType:
    """The kernel module (it imports triton, so only when the triton engine is used)."""
    try:
        from anydistill.kernels import divergence_rows
    except ImportError as err:  # triton ships with CUDA builds of torch
        raise ValueError(
            f"the triton loss engine needs the `triton` package ({err}); "
            "install it or set objective.engine to torch"
        ) from None
    return divergence_rows


def kernel_rows(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    terms: Sequence[ActiveTerm],
    stat_names: Sequence[str],
    want_grad: bool,
    grad_out: Tensor | None = None,
    *,
    block_v: int | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The Triton kernel's `rows_loss_and_grad` on objective terms (see there); ValueError
    when a term's kind has no kernel launch."""
    numbers = registry.kernel_terms(terms)
    if numbers is None:
        kinds = [registry.get(t.kind) for t in terms]
        missing = [k.name for k in kinds if k.family != "ce" and k.kernel is None]
        raise ValueError(f"the Triton kernel has no launch for {', '.join(missing)}")
    args = (student_logits, teacher_logits, labels, numbers, stat_names, want_grad, grad_out)
    return _kernel().rows_loss_and_grad(*args, block_v=block_v)


def triton_rows(
    plan: Plan,
    zs: Tensor,
    zt: Tensor | SparseTarget | MixtureTarget | None,
    labels: Tensor | None,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One block through the kernel, or through `torch_rows` when the kernel cannot take it
    (a sparse teacher, a mixture of teachers, or a term without a kernel launch)."""
    numbers = registry.kernel_terms(plan.terms)
    if numbers is None or isinstance(zt, SparseTarget | MixtureTarget):
        return torch_rows(plan, zs, zt, labels, want_grad)
    # The gradient overwrites zs in place unless soft-capping's backward needs zs.
    out = zs if plan.student_cap is None else None
    return _kernel().rows_loss_and_grad(
        zs, zt, labels, numbers, plan.stat_names, want_grad, grad_out=out
    )


def _rows_fn(engine: str) -> RowsFn:
    if engine == "triton":
        _kernel()  # a missing triton is one sentence now, not at the first block
        return triton_rows
    return torch_rows


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
    teacher: TeacherSignal | SparseTeacher | MixtureSignal | None,
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
        kind = registry.get(term.kind)
        if kind.family == "contrastive":
            raise ValueError(
                f"term {term.name!r}: split contrastive terms first (split_contrastive)"
            )
        if kind.family == "cross":
            raise ValueError(
                f"term {term.name!r}: {term.kind} runs on aligned chunks (losses.cross)"
            )
        if engine not in kind.engines:
            raise ValueError(f"term {term.name!r} ({term.kind}) cannot run on the {engine} engine")
        if kind.needs != "nothing" and teacher is None:
            raise ValueError(
                f"term {term.name!r} ({term.kind}) needs a teacher signal, but none was given"
            )
        if kind.family == "ce" and labels is None:
            raise ValueError(f"term {term.name!r} (ce) needs labels, but none were given")
    n = student_hidden.shape[0]
    if mask.shape != (n,):
        raise ValueError(f"mask must have shape [{n}], got {list(mask.shape)}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}], got {list(labels.shape)}")
    _check_head(student_head, vocab_size, "student")
    if isinstance(teacher, SparseTeacher):
        _check_sparse(teacher, terms, n, vocab_size)
    elif isinstance(teacher, MixtureSignal):
        _check_mixture(teacher, n, vocab_size)
    elif teacher is not None:
        if teacher.hidden.shape[0] != n:
            raise ValueError(
                f"teacher hidden has {teacher.hidden.shape[0]} rows, the student has {n}"
            )
        _check_head(teacher.head, vocab_size, "teacher")


def _check_mixture(teacher: MixtureSignal, n: int, vocab: int) -> None:
    count = len(teacher.signals)
    if count < 1 or len(teacher.names) != count or len(teacher.weights) != count:
        raise ValueError(
            f"a teacher mixture needs one name and one weight per member, got {len(teacher.names)}"
            f" names, {len(teacher.weights)} weights and {count} teachers"
        )
    if len(set(teacher.names)) != count:
        raise ValueError(f"teacher names in a mixture must be unique, got {list(teacher.names)}")
    for name, weight, signal in zip(teacher.names, teacher.weights, teacher.signals, strict=True):
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"teacher {name!r}: a mixture weight must be > 0, got {weight}")
        if not isinstance(signal, TeacherSignal):
            raise ValueError(
                f"teacher {name!r}: a mixture mixes full distributions, so each member must be an "
                f"online teacher (TeacherSignal), not {type(signal).__name__}"
            )
        if signal.hidden.shape[0] != n:
            raise ValueError(
                f"teacher {name!r}: hidden has {signal.hidden.shape[0]} rows, the student has {n}"
            )
        _check_head(signal.head, vocab, f"teacher {name!r}")


def _check_sparse(teacher: SparseTeacher, terms: list[ActiveTerm], n: int, vocab: int) -> None:
    if teacher.tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {', '.join(TAIL_MODES)}, got {teacher.tail!r}")
    k = teacher.ids.shape[1] if teacher.ids.dim() == 2 else -1
    if teacher.ids.shape != (n, k) or teacher.logp.shape != (n, k) or k < 1:
        raise ValueError(f"sparse teacher ids/logp must be [{n}, k], got {list(teacher.ids.shape)}")
    if teacher.log_tail.shape != (n,):
        raise ValueError(
            f"sparse teacher log_tail must be [{n}], got {list(teacher.log_tail.shape)}"
        )
    if k > vocab:
        raise ValueError(f"sparse teacher has k = {k} ids per row but the vocabulary is {vocab}")
    for term in terms:
        why = refusal(term.kind, term.temperature, term.beta, term.alpha, teacher.tail)
        if why is not None:
            raise ValueError(f"term {term.name!r}: {why}")


def _teacher_blocks(
    teacher: TeacherSignal | SparseTeacher | MixtureSignal | None, rows: Tensor, plan: Plan
):
    """A function of (start, end) giving the teacher's part of those selected rows."""
    if teacher is None:
        return lambda start, end: None
    if isinstance(teacher, SparseTeacher):
        ids, logp = teacher.ids.index_select(0, rows), teacher.logp.index_select(0, rows)
        tail = teacher.log_tail.index_select(0, rows)
        return lambda start, end: SparseTarget(
            ids[start:end], logp[start:end], tail[start:end], teacher.tail
        )
    if isinstance(teacher, MixtureSignal):  # one dense block per member, each with its head
        members = [_dense_blocks(s, rows, plan) for s in teacher.signals]
        log_w = teacher.log_weights()
        return lambda start, end: MixtureTarget(
            teacher.names, log_w, tuple(block(start, end) for block in members)
        )
    return _dense_blocks(teacher, rows, plan)


def _dense_blocks(teacher: TeacherSignal, rows: Tensor, plan: Plan):
    """(start, end) -> the final logits of one online teacher on those selected rows."""
    ht = teacher.hidden.detach().index_select(0, rows)
    t_w, t_b = teacher.head.weight.detach()[: plan.vocab_size], teacher.head.bias
    t_b = t_b.detach() if t_b is not None else None
    # Cast once, not once per block: to the matmul dtype, or (on CPU, which has no mixed
    # kernel) a 16-bit teacher head to the compute dtype.
    if plan.matmul_dtype is not None:
        t_w, ht = t_w.to(plan.matmul_dtype), ht.to(plan.matmul_dtype)
    elif not ht.is_cuda and t_w.dtype != compute_dtype(ht):
        t_w = t_w.to(compute_dtype(ht))

    scale, cap = float(teacher.head.logit_scale), teacher.head.softcap

    def dense(start: int, end: int) -> Tensor:
        raw = project(ht[start:end], t_w, t_b, plan.vocab_size, plan.matmul_dtype)
        return transform(raw, scale, cap)

    return dense


def distill_loss(
    student_hidden: Tensor,
    student_head: Head,
    teacher: TeacherSignal | SparseTeacher | MixtureSignal | None,
    labels: Tensor | None,
    mask: Tensor,
    terms: list[ActiveTerm],
    vocab_size: int,
    normalizer: float | Tensor,
    engine: str = "torch",
    chunk_size: int | None = None,
    head_dtype: torch.dtype | None | str = "auto",
) -> LossOutput:
    """Weighted distillation loss over the rows where `mask` is True.

    `student_hidden` is `[N, Hs]`, already shifted and flattened (row i predicts `labels[i]`);
    `teacher.hidden` is `[N, Ht]`. `normalizer` is the global number of loss tokens across
    gradient accumulation and ranks, so `loss = sum_k w_k * sum_tokens(value_k) / normalizer`
    (not a per-micro-batch mean). A NaN/inf loss is returned, not raised: `terms` holds every
    term's value so the caller can name the culprit. `chunk_size=None` sizes blocks by the
    vocabulary (`auto_chunk_size`). `head_dtype` is the dtype of the head matmuls' operands
    (accumulated in float32): "auto" takes autocast's 16-bit dtype when autocast is on (a
    `precision: bf16` run), None keeps the compute dtype; softmax, divergences and every
    reduction stay float32 either way.
    """
    if isinstance(teacher, MixtureSignal) and len(teacher.signals) == 1:
        # A one-member mixture is its member, bit for bit (kernel included), plus its stats.
        _check_mixture(teacher, student_hidden.shape[0], vocab_size)
        out = distill_loss(
            student_hidden, student_head, teacher.signals[0], labels, mask, terms, vocab_size,
            normalizer, engine, chunk_size, head_dtype,
        )  # fmt: skip
        out.stats.update(member_stats(teacher.names[0], out.stats))
        return out
    if chunk_size is None:
        chunk_size = auto_chunk_size(vocab_size, student_hidden.device)
    _validate(
        student_hidden, student_head, teacher, labels, mask, terms, vocab_size, engine, chunk_size
    )
    has_teacher = teacher is not None
    sparse = isinstance(teacher, SparseTeacher)
    mixture = isinstance(teacher, MixtureSignal)
    stat_names = ("tokens", "student_entropy")
    if has_teacher:
        stat_names += ("fkl", "agree", "teacher_entropy")
    if labels is not None:
        stat_names += ("student_nll",)
        if has_teacher and not sparse:
            stat_names += ("teacher_nll",)
    if isinstance(teacher, MixtureSignal):
        stat_names += tuple(
            f"teacher/{name}/{what}" for name in teacher.names for what in ("kl", "agree", "tokens")
        )
    t_head = teacher.head if isinstance(teacher, TeacherSignal) else None
    plan = Plan(
        terms=tuple(terms),
        vocab_size=vocab_size,
        student_scale=float(student_head.logit_scale),
        student_cap=student_head.softcap,
        teacher_scale=float(t_head.logit_scale) if t_head is not None else 1.0,
        teacher_cap=t_head.softcap if t_head is not None else None,
        stat_names=stat_names,
        matmul_dtype=(
            matmul_dtype(student_hidden.device, student_hidden)
            if head_dtype == "auto"
            else head_dtype
        ),
    )

    # Only selected rows are ever projected.
    rows = mask.nonzero(as_tuple=True)[0]
    hs = student_hidden.index_select(0, rows)
    y = labels.index_select(0, rows) if labels is not None else None
    s_w, s_b = student_head.weight, student_head.bias
    teacher_block = _teacher_blocks(teacher, rows, plan)

    # The trainer runs under autocast; the loss math must stay float32 regardless.
    with torch.autocast(device_type=hs.device.type, enabled=False):
        if engine == "naive":
            raw = project(hs, s_w, s_b, vocab_size, plan.matmul_dtype)
            zs = transform(raw, plan.student_scale, plan.student_cap)
            with torch.no_grad():
                zt = teacher_block(0, hs.shape[0])
            sums, stat_vec = block_sums(plan, zs, zt, y)
            total = weighted_total(terms, sums)
        else:
            want_grad = torch.is_grad_enabled() and any(
                x is not None and x.requires_grad for x in (hs, s_w, s_b)
            )
            # The kernel takes one dense teacher; cached (sparse) ones and mixtures go through
            # torch's rows.
            rows_fn = torch_rows if sparse or mixture else _rows_fn(engine)
            total, sums, stat_vec = fused_linear_distill(
                hs, s_w, s_b, teacher_block, y, plan, rows_fn, chunk_size, want_grad
            )

    loss = total / normalizer
    detached = sums.detach()
    term_values = {t.name: detached[k] / normalizer for k, t in enumerate(terms)}
    stats = {name: stat_vec[k].detach() for k, name in enumerate(stat_names)}
    return LossOutput(loss=loss, terms=term_values, stats=stats)

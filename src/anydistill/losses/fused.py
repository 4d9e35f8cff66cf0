"""Fused linear + distillation loss: gradients are computed block by block in the forward.

For each block of rows the student (and teacher) logits are projected, the rows function
(`chunk_math.torch_rows` or the Triton kernel) returns the block's term sums, stats and
d(loss)/d(logits), and that gradient is folded into dX (rows of the student hidden states)
and dW/db (the student head) at once. Backward then only scales the stored gradients by the
incoming scalar. So no `[N, V]` tensor ever exists, and the head's logits are built once
(not twice, as activation checkpointing would) — the scheme of Liger-Kernel's chunked
losses, generalised to every divergence of the registry and mixtures of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from anydistill.losses.chunk_math import (
    Plan,
    compute_dtype,
    mm_float32,
    project,
    transform,
    transform_backward,
    weighted_total,
)
from anydistill.losses.grad_in_forward import GradInForward
from anydistill.losses.sparse import SparseTarget

# The teacher's part of rows [start, end): dense logits, a sparse target, or None (ce only).
TeacherBlocks = Callable[[int, int], "Tensor | SparseTarget | None"]
RowsFn = Callable[
    [Plan, Tensor, "Tensor | None", "Tensor | None", bool],
    tuple[Tensor, Tensor, "Tensor | None"],
]


def _matmul_acc(out: Tensor, a: Tensor, b: Tensor, dtype: torch.dtype | None) -> None:
    """out += a @ b in float32: operands in `dtype` (the plan's matmul dtype) when given,
    bf16/fp16 operands multiplied natively on CUDA, else in out's dtype."""
    if dtype is not None and out.dtype == torch.float32:
        out.add_(mm_float32(a.to(dtype), b.to(dtype)))
    elif a.is_cuda and b.dtype in (torch.bfloat16, torch.float16):
        out.add_(torch.mm(a.to(b.dtype), b, out_dtype=torch.float32))
    else:
        out.addmm_(a, b.to(out.dtype))


def fused_linear_distill(
    hs: Tensor,
    s_w: Tensor,
    s_b: Tensor | None,
    teacher_block: TeacherBlocks,
    labels: Tensor | None,
    plan: Plan,
    rows_fn: RowsFn,
    chunk_size: int,
    want_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(weighted total, term sums, stats) over all rows, differentiable in the student hidden
    rows, head weight and head bias only (through `GradInForward` when `want_grad`)."""

    def run(needs: Sequence[bool], hs: Tensor, s_w: Tensor, s_b: Tensor | None):
        return _blocks(hs, s_w, s_b, teacher_block, labels, plan, rows_fn, chunk_size, needs)

    if want_grad:
        total, sums, stats = GradInForward.apply(run, hs, s_w, s_b)
        return total, sums, stats
    total, (sums, stats), _ = run((False, False, False), hs, s_w, s_b)
    return total, sums, stats


def _blocks(
    hs: Tensor,
    s_w: Tensor,
    s_b: Tensor | None,
    teacher_block: TeacherBlocks,
    labels: Tensor | None,
    plan: Plan,
    rows_fn: RowsFn,
    chunk_size: int,
    needs: Sequence[bool],
) -> tuple[Tensor, tuple[Tensor, Tensor], list[Tensor | None]]:
    n, v = hs.shape[0], plan.vocab_size
    k, s = len(plan.terms), len(plan.stat_names)
    acc = {"dtype": compute_dtype(hs), "device": hs.device}
    sums = torch.zeros(k, **acc)
    stats = torch.zeros(s, **acc)
    # Only what trains gets a gradient: a frozen head (LoRA, frozen embeddings) has no dW
    # buffer and no dW matmul; frozen hidden rows (a probe) no dX.
    need_h, need_w, need_b = needs
    want_grad = need_h or need_w or need_b
    d_hs = torch.zeros(hs.shape, **acc) if need_h else None
    d_w = torch.zeros(s_w.shape, **acc) if need_w else None
    d_b = torch.zeros(s_b.shape, **acc) if need_b and s_b is not None else None
    mm = plan.matmul_dtype
    # The head (and, for dW, the rows) in the matmul dtype once, not once per block.
    w_rows = s_w[:v] if mm is None else s_w[:v].to(mm)
    h_rows = hs if mm is None else hs.to(mm)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        h = h_rows[start:end]
        raw = project(h, w_rows, s_b, v, mm)
        zs = transform(raw, plan.student_scale, plan.student_cap)
        zt = teacher_block(start, end)
        y = labels[start:end] if labels is not None else None
        del raw
        block, block_stats, grad = rows_fn(plan, zs, zt, y, want_grad)
        sums += block
        stats += block_stats
        if want_grad:
            assert grad is not None
            grad = transform_backward(grad, zs, plan.student_scale, plan.student_cap)
            if d_hs is not None:
                _matmul_acc(d_hs[start:end], grad, w_rows, mm)
            if d_w is not None:
                _matmul_acc(d_w[:v], grad.T, h, mm)
            if d_b is not None:
                d_b[:v] += grad.sum(dim=0)
        del zs, zt, grad
    return weighted_total(plan.terms, sums), (sums, stats), [d_hs, d_w, d_b]

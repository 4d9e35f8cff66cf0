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

from collections.abc import Callable

import torch
from torch import Tensor

from anydistill.losses.chunk_math import (
    Plan,
    compute_dtype,
    project,
    transform,
    transform_backward,
    weighted_total,
)
from anydistill.losses.sparse import SparseTarget

# The teacher's part of rows [start, end): dense logits, a sparse target, or None (ce only).
TeacherBlocks = Callable[[int, int], "Tensor | SparseTarget | None"]
RowsFn = Callable[
    [Plan, Tensor, "Tensor | None", "Tensor | None", bool],
    tuple[Tensor, Tensor, "Tensor | None"],
]


def _matmul_acc(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b in float32, with bf16/fp16 operands multiplied natively on CUDA."""
    if a.is_cuda and b.dtype in (torch.bfloat16, torch.float16):
        out.add_(torch.mm(a.to(b.dtype), b, out_dtype=torch.float32))
    else:
        out.addmm_(a, b.to(out.dtype))


class FusedLinearDistill(torch.autograd.Function):
    """Differentiable in the student hidden rows, head weight and head bias only."""

    @staticmethod
    def forward(
        ctx,
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
        n, v = hs.shape[0], plan.vocab_size
        k, s = len(plan.terms), len(plan.stat_names)
        acc = {"dtype": compute_dtype(hs), "device": hs.device}
        sums = torch.zeros(k, **acc)
        stats = torch.zeros(s, **acc)
        if want_grad:
            d_hs = torch.zeros(hs.shape, **acc)
            d_w = torch.zeros(s_w.shape, **acc)
            d_b = torch.zeros(s_b.shape, **acc) if s_b is not None else None
        w_rows = s_w[:v]
        for start in range(0, n, chunk_size):
            end = min(start + chunk_size, n)
            h = hs[start:end]
            raw = project(h, s_w, s_b, v)
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
                _matmul_acc(d_hs[start:end], grad, w_rows)
                _matmul_acc(d_w[:v], grad.T, h)
                if d_b is not None:
                    d_b[:v] += grad.sum(dim=0)
            del zs, zt, grad
        total = weighted_total(plan.terms, sums)
        if want_grad:
            # Kept as attributes, not saved tensors: backward scales them in place, once.
            ctx.grads = (d_hs, d_w, d_b)
            ctx.dtypes = (hs.dtype, s_w.dtype, s_b.dtype if s_b is not None else None)
        ctx.want_grad = want_grad
        ctx.mark_non_differentiable(sums, stats)
        return total, sums, stats

    @staticmethod
    def backward(ctx, g_total: Tensor, _g_sums: Tensor, _g_stats: Tensor):
        nones = (None,) * 6
        if not ctx.want_grad:
            return (None, None, None, *nones)
        d_hs, d_w, d_b = ctx.grads
        ctx.grads = None
        hs_dtype, w_dtype, b_dtype = ctx.dtypes
        g = g_total.to(d_hs.dtype)
        grad_b = d_b.mul_(g).to(b_dtype) if d_b is not None else None
        return d_hs.mul_(g).to(hs_dtype), d_w.mul_(g).to(w_dtype), grad_b, *nones

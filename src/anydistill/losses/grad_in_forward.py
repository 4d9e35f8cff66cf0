"""The one autograd function of the losses that take their gradient during the forward.

The fused vocabulary loss (`losses.fused`) and the aligned terms (`losses.cross.common`)
both walk rows block by block and fold each block's gradient into the inputs' gradients at
once, so no block's `[rows, V]` tensors outlive it and none is recomputed. `run(needs,
*inputs)` returns `(total, extras, grads)`: the differentiable scalar, outputs that are not
differentiable (sums, stats), and one gradient of `total` per input (None where not needed;
`needs[i]` says which inputs want one). Backward only scales them by the incoming gradient
and casts each to its input's dtype. Not twice differentiable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Run = Callable[..., tuple[Tensor, Sequence[Tensor], Sequence[Tensor | None]]]


class GradInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: Run, *inputs: Any) -> tuple[Tensor, ...]:
        total, extras, grads = run(ctx.needs_input_grad[1:], *inputs)
        # Attributes, not saved tensors: backward scales them in place, once.
        ctx.grads = list(grads)
        ctx.dtypes = [x.dtype if isinstance(x, Tensor) else None for x in inputs]
        ctx.mark_non_differentiable(*extras)
        return (total, *extras)

    @staticmethod
    def backward(ctx: Any, g_total: Tensor, *_ignored: Tensor) -> tuple[Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        out = [
            None if g is None else g.mul_(g_total.to(g.dtype)).to(dtype)
            for g, dtype in zip(grads, ctx.dtypes, strict=True)
        ]
        return (None, *out)

"""AdaSPEC token selection inside the step: a frozen reference drafter picks the tokens.

See `anydistill.losses.selection` for the method. The reference model must share the
tokenizer; its hidden states are computed without gradients for each micro-batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.losses.engine import Head, TeacherSignal
from anydistill.losses.selection import per_row_forward_kl, select_learnable
from anydistill.models.heads import HiddenStates, output_head


class TokenSelector:
    """Row mask of the `keep` fraction of tokens the drafter can still learn most from."""

    def __init__(self, reference: torch.nn.Module, keep: float, vocab_size: int) -> None:
        self.reference = reference
        self.keep = keep
        self.vocab_size = vocab_size

    @torch.no_grad()
    def __call__(
        self,
        rows: Tensor,
        head: Head,
        input_ids: Tensor,
        attention: Tensor,
        select: Tensor,
        signal: TeacherSignal,
    ) -> Tensor:
        ref_rows = HiddenStates(self.reference)(input_ids, attention)[:, :-1][select]
        draft = per_row_forward_kl(rows.detach(), head, signal, self.vocab_size)
        ref = per_row_forward_kl(ref_rows, output_head(self.reference), signal, self.vocab_size)
        return select_learnable(draft, ref, self.keep)

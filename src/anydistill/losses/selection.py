"""AdaSPEC-style token selection: distill the drafter only on tokens it can learn.

Hu et al. 2025, "AdaSPEC: Selective Knowledge Distillation for Efficient Speculative
Decoders": a reference model (the drafter's architecture, already distilled from the target)
shows which tokens are learnable. Per token, the gap between the drafter's and the
reference's divergence from the target, dL = KL(p || q_draft) - KL(p || q_ref), is large
where the drafter still has room to improve; the KD loss keeps the top `keep` fraction of
tokens by dL and drops the rest (hard tokens the drafter's capacity cannot fit anyway).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.losses.chunk_math import head_logits
from anydistill.losses.divergences import forward_kl
from anydistill.losses.engine import Head, TeacherSignal


@torch.no_grad()
def per_row_forward_kl(
    hidden: Tensor, head: Head, teacher: TeacherSignal, vocab_size: int, chunk: int = 1024
) -> Tensor:
    """KL(teacher || model) per row `[N]`, block by block (no `[N, V]` tensor)."""
    out = []
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        zq = head_logits(hidden[start:end], head, vocab_size)
        zp = head_logits(teacher.hidden[start:end], teacher.head, vocab_size)
        out.append(forward_kl(torch.log_softmax(zq, -1), torch.log_softmax(zp, -1)))
    return torch.cat(out) if out else hidden.new_zeros(0)


def select_learnable(draft_kl: Tensor, reference_kl: Tensor, keep: float) -> Tensor:
    """Boolean mask of the ceil(keep * N) rows with the largest draft_kl - reference_kl."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    n = draft_kl.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=draft_kl.device)
    if n == 0:
        return mask
    k = max(1, int(-(-keep * n // 1)))
    mask[(draft_kl - reference_kl).topk(k).indices] = True
    return mask

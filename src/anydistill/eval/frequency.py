"""Teacher-student agreement by how frequent the target token is.

Distillation usually helps most on rare tokens, which a plain average hides: the targets of
the eval set are ranked by their count there, and top-1 agreement is reported per rank
bucket (the 10 most frequent tokens, ranks 11-100, 101-1000, and the rest).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anydistill.losses.chunk_math import head_logits
from anydistill.losses.engine import Head

BUCKETS = ((1, 10), (11, 100), (101, 1000), (1001, None))


def bucket_name(lo: int, hi: int | None) -> str:
    return f"rank_{lo}-{hi}" if hi is not None else f"rank_{lo}+"


@torch.no_grad()
def row_argmax(hidden: Tensor, head: Head, vocab_size: int, chunk: int = 1024) -> Tensor:
    """argmax of the head's logits per row, without building all rows' logits at once."""
    out = []
    for start in range(0, hidden.shape[0], chunk):
        out.append(head_logits(hidden[start : start + chunk], head, vocab_size).argmax(dim=-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=hidden.device)


def agreement_by_frequency(agree: Tensor, targets: Tensor) -> dict[str, float]:
    """`agree_freq/<bucket>` -> agreement rate over the rows whose target is in that bucket."""
    if targets.numel() == 0:
        return {}
    ids, counts = targets.unique(return_counts=True)
    order = counts.argsort(descending=True, stable=True)
    rank = torch.empty_like(ids)
    rank[order] = torch.arange(1, ids.numel() + 1, device=ids.device)
    row_rank = rank[torch.searchsorted(ids, targets)]
    result = {}
    for lo, hi in BUCKETS:
        inside = (row_rank >= lo) & ((row_rank <= hi) if hi is not None else True)
        if inside.any():
            result[f"agree_freq/{bucket_name(lo, hi)}"] = float(agree[inside].float().mean())
    return result

"""Held-out metrics of a cross-tokenizer run, on the aligned chunks both models can score.

Every usable chunk spells the same bytes for both models, so summing each model's negative
log-likelihood of the chunk's own tokens and dividing by the chunks' UTF-8 bytes gives bits
per byte over exactly the same text: students and teachers with different tokenizers compare
on the same footing.

- `student/bits_per_byte`, `teacher/bits_per_byte`: over the usable chunks.
- `student/ce`, `student/ppl`: per student token of those chunks (its own tokenizer's units).
- `chunk_agreement`: the share of chunks where, at the position before the chunk, both
  models' greedy next tokens would continue the text the same way (one token's bytes are a
  prefix of the other's; two special tokens also agree). The cross-tokenizer twin of top-1
  agreement.
- `chunk_nll_gap`: mean |chunk NLL of the student - chunk NLL of the teacher|, in nats.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from anydistill.align.token_bytes import token_view
from anydistill.data import eval_batches
from anydistill.data.aligned import CrossExample, collate_cross
from anydistill.losses.chunk_math import head_logits
from anydistill.models.heads import HiddenStates, output_head
from anydistill.models.tokenizer import real_vocab_size

_ROWS = 512  # rows per logits block


def _chunk_scores(
    model: torch.nn.Module,
    ids: Tensor,
    attention: Tensor,
    targets: Tensor,
    chunk: Tensor,
    n_chunks: int,
    vocab: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per chunk: NLL in nats (float64), the greedy token at its first row, its token count."""
    device = next(model.parameters()).device
    hidden = HiddenStates(model)(ids.to(device), attention.to(device).long())
    hidden = hidden[attention.to(device)]
    chunk, targets = chunk.to(device), targets.to(device)
    rows = (chunk >= 0).nonzero(as_tuple=True)[0]
    head = output_head(model)
    nll = torch.zeros(n_chunks, dtype=torch.float64, device=device)
    first = torch.full((n_chunks,), -1, dtype=torch.long, device=device)
    rows_first = torch.ones_like(rows, dtype=torch.bool)
    rows_first[1:] = chunk[rows[1:]] != chunk[rows[:-1]]  # chunk ids are non-decreasing
    for a in range(0, len(rows), _ROWS):
        r = rows[a : a + _ROWS]
        z = head_logits(hidden[r], head, vocab)
        logp = torch.log_softmax(z, -1).gather(1, targets[r, None]).squeeze(1)
        nll.index_add_(0, chunk[r], -logp.double())
        f = rows_first[a : a + _ROWS]
        first[chunk[r][f]] = z.argmax(-1)[f]
    count = torch.bincount(chunk[rows], minlength=n_chunks)
    return nll, first, count


def _agree(teacher_ids: list[int], student_ids: list[int], t_bytes: list, s_bytes: list) -> int:
    """Chunks whose two greedy tokens would continue the text the same way."""
    hits = 0
    for t, s in zip(teacher_ids, student_ids, strict=True):
        tb, sb = t_bytes[t] if t >= 0 else None, s_bytes[s] if s >= 0 else None
        if tb is None or sb is None:
            hits += tb is None and sb is None and t >= 0 and s >= 0
        else:
            hits += tb.startswith(sb) or sb.startswith(tb)
    return hits


@torch.no_grad()
def evaluate_cross(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    examples: list[CrossExample],
    teacher_tok: Any,
    student_tok: Any,
    batch_size: int,
    max_batches: int | None,
) -> dict[str, float]:
    """Student (and teacher) metrics over the first `max_batches` batches of `examples`."""
    teacher_vocab, student_vocab = real_vocab_size(teacher_tok), real_vocab_size(student_tok)
    batches = eval_batches(examples, batch_size)[:max_batches]
    if not batches:
        return {}
    models = [("student", student, student_vocab)]
    if teacher is not None:
        models.append(("teacher", teacher, teacher_vocab))
    t_bytes, s_bytes = token_view(teacher_tok).token_bytes, token_view(student_tok).token_bytes
    was_training = student.training
    student.eval()
    sums: dict[str, float] = {"bytes": 0.0, "chunks": 0.0, "agree": 0.0}
    gap = 0.0
    for batch in batches:
        tok = collate_cross(batch, teacher_vocab, student_vocab)
        sums["bytes"] += float(tok.chunk_bytes.sum())
        sums["chunks"] += tok.n_chunks
        scores = {}
        for name, model, vocab in models:
            ids, att = getattr(tok, f"{name}_ids"), getattr(tok, f"{name}_attention")
            targets, chunk = getattr(tok, f"{name}_targets"), getattr(tok, f"{name}_chunk")
            nll, first, count = _chunk_scores(model, ids, att, targets, chunk, tok.n_chunks, vocab)
            scores[name] = (nll, first)
            sums[f"{name}_nll"] = sums.get(f"{name}_nll", 0.0) + float(nll.sum())
            sums[f"{name}_tokens"] = sums.get(f"{name}_tokens", 0.0) + float(count.sum())
        if teacher is not None:
            (s_nll, s_first), (t_nll, t_first) = scores["student"], scores["teacher"]
            sums["agree"] += _agree(t_first.tolist(), s_first.tolist(), t_bytes, s_bytes)
            gap += float((s_nll - t_nll).abs().sum())
    student.train(was_training)
    nbytes = max(sums["bytes"], 1.0)
    result: dict[str, float] = {}
    for name, _, _ in models:
        nll, tokens = sums[f"{name}_nll"], max(sums[f"{name}_tokens"], 1.0)
        result[f"{name}/ce"] = nll / tokens
        result[f"{name}/ppl"] = math.exp(min(nll / tokens, 50.0))
        result[f"{name}/bits_per_byte"] = nll / math.log(2) / nbytes
    if teacher is not None:
        result["chunk_agreement"] = sums["agree"] / max(sums["chunks"], 1.0)
        result["chunk_nll_gap"] = gap / max(sums["chunks"], 1.0)
    result["eval_chunks"] = sums["chunks"]
    result["eval_bytes"] = sums["bytes"]
    result["eval_tokens"] = sums["student_tokens"]
    return result

"""Held-out metrics of a cross-tokenizer run, on the aligned chunks both models can score.

Every usable chunk spells the same bytes for both models, so summing each model's negative
log-likelihood of the chunk's own tokens and dividing by the chunks' UTF-8 bytes gives bits
per byte over exactly the same text: students and teachers with different tokenizers compare
on the same footing.

- `student/bits_per_byte`, `teacher/bits_per_byte`: over the usable chunks.
- `student/ce`, `student/ppl`: per student token of those chunks (its own tokenizer's units).
- `chunk_agreement`: of the chunks the teacher would write greedily (its argmax is the actual
  token at every one of the chunk's positions), the share the student writes greedily too.
- `chunk_nll_gap`: mean |chunk NLL of the student - chunk NLL of the teacher|, in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anydistill.data import eval_batches
from anydistill.losses.chunk_math import head_logits
from anydistill.losses.cross.batch import CrossExample, collate_cross
from anydistill.models.heads import HiddenStates, output_head

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
    """Per chunk: (NLL in nats, all positions greedy-correct, token count), float64/bool/long."""
    device = next(model.parameters()).device
    hidden = HiddenStates(model)(ids.to(device), attention.to(device).long())
    hidden = hidden[attention.to(device)]
    chunk, targets = chunk.to(device), targets.to(device)
    rows = (chunk >= 0).nonzero(as_tuple=True)[0]
    head = output_head(model)
    nll = torch.zeros(n_chunks, dtype=torch.float64, device=device)
    wrong = torch.zeros(n_chunks, dtype=torch.long, device=device)
    for a in range(0, len(rows), _ROWS):
        r = rows[a : a + _ROWS]
        z = head_logits(hidden[r], head, vocab)
        logp = torch.log_softmax(z, -1).gather(1, targets[r, None]).squeeze(1)
        nll.index_add_(0, chunk[r], -logp.double())
        wrong.index_add_(0, chunk[r], (z.argmax(-1) != targets[r]).long())
    count = torch.bincount(chunk[rows], minlength=n_chunks)
    return nll, wrong == 0, count


@torch.no_grad()
def evaluate_cross(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    examples: list[CrossExample],
    teacher_vocab: int,
    student_vocab: int,
    batch_size: int,
    max_batches: int | None,
) -> dict[str, float]:
    """Student (and teacher) metrics over the first `max_batches` batches of `examples`."""
    batches = eval_batches(examples, batch_size)[:max_batches]
    if not batches:
        return {}
    models = [("student", student, student_vocab)]
    if teacher is not None:
        models.append(("teacher", teacher, teacher_vocab))
    was_training = student.training
    student.eval()
    sums: dict[str, float] = {"bytes": 0.0, "chunks": 0.0, "t_greedy": 0.0, "both": 0.0}
    gap = 0.0
    for batch in batches:
        tok = collate_cross(batch, teacher_vocab, student_vocab)
        sums["bytes"] += float(tok.chunk_bytes.sum())
        sums["chunks"] += tok.n_chunks
        scores = {}
        for name, model, vocab in models:
            ids, att = getattr(tok, f"{name}_ids"), getattr(tok, f"{name}_attention")
            targets, chunk = getattr(tok, f"{name}_targets"), getattr(tok, f"{name}_chunk")
            nll, greedy, count = _chunk_scores(model, ids, att, targets, chunk, tok.n_chunks, vocab)
            scores[name] = (nll, greedy)
            sums[f"{name}_nll"] = sums.get(f"{name}_nll", 0.0) + float(nll.sum())
            sums[f"{name}_tokens"] = sums.get(f"{name}_tokens", 0.0) + float(count.sum())
        if teacher is not None:
            (s_nll, s_greedy), (t_nll, t_greedy) = scores["student"], scores["teacher"]
            sums["t_greedy"] += float(t_greedy.sum())
            sums["both"] += float((t_greedy & s_greedy).sum())
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
        result["chunk_agreement"] = sums["both"] / max(sums["t_greedy"], 1.0)
        result["chunk_nll_gap"] = gap / max(sums["chunks"], 1.0)
    result["eval_chunks"] = sums["chunks"]
    result["eval_bytes"] = sums["bytes"]
    result["eval_tokens"] = sums["student_tokens"]
    return result

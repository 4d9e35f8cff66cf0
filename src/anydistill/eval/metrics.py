"""Held-out metrics: cross-entropy, perplexity, bits per byte, teacher KL and agreement.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes the
target tokens spell, so students with different tokenizers compare on the same footing.

`evaluate` takes the run's eval examples as the data path made them. Tokenized examples (one
tokenizer) are scored row by row against the teacher's distribution: `student/*`,
`teacher/*`, `kl_teacher_student`, `top1_agreement` and agreement by token frequency.
Aligned examples (two tokenizers) are scored on the chunks both models can score:

- `student/bits_per_byte`, `teacher/bits_per_byte`: over the usable chunks, which spell the
  same bytes for both models;
- `student/ce`, `student/ppl`: per student token of those chunks (its own tokenizer's units);
- `chunk_agreement`: the share of chunks where, at the position before the chunk, both
  models' greedy next tokens would continue the text the same way (one token's bytes are a
  prefix of the other's; two special tokens also agree): top-1 agreement across tokenizers;
- `chunk_nll_gap`: mean |chunk NLL of the student - chunk NLL of the teacher|, in nats.

Several teachers (`teachers.multi.MultiTeacher`): `teacher/*` and the shared metrics score
their mixture (nothing when they are routed: eval records carry no route), and every member
that is a model is also scored alone as `teacher/<name>/{ce,ppl,bits_per_byte,kl,agreement}`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from anydistill.align.chunks import byte_lengths
from anydistill.align.token_bytes import token_view
from anydistill.data import collate, eval_batches
from anydistill.data.aligned import CrossExample, collate_cross
from anydistill.data.views import step_inputs
from anydistill.eval.frequency import agreement_by_frequency, row_argmax
from anydistill.losses.chunk_math import head_logits
from anydistill.losses.engine import TeacherSignal, distill_loss
from anydistill.losses.objective import Objective, TermSpec
from anydistill.models.heads import HiddenStates, output_head
from anydistill.models.tokenizer import real_vocab_size
from anydistill.teachers import teacher_signal


def target_bytes(examples: list[dict], tokenizer: PreTrainedTokenizerBase) -> int:
    """UTF-8 bytes spelled by the target tokens (special tokens spell none), read from the
    ids (`align.byte_lengths`): a decoder that strips a leading space, or a tokenizer that
    marks spaces in its normalizer, still counts every byte of the text."""
    total = 0
    for ex in examples:
        lengths = byte_lengths(tokenizer, ex["input_ids"])
        mask = np.asarray(ex["loss_mask"], dtype=bool)
        total += int(lengths[1:][mask[1:]].sum())
    return total


def _summaries(nll: float, tokens: float, nbytes: int) -> dict[str, float]:
    ce = nll / max(tokens, 1.0)
    return {
        "ce": ce,
        "ppl": math.exp(min(ce, 50.0)),
        "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
    }


@torch.no_grad()
def evaluate(
    student: torch.nn.Module,
    teacher: Any,
    examples: list,
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    batch_size: int,
    max_batches: int | None,
    device: torch.device,
    pad_id: int,
    chunk_size: int | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict[str, float]:
    """Student (and teacher: a teachers.Teacher, or a bare model) metrics over the first
    `max_batches` eval batches. `tokenizer` is the student's; aligned examples also need
    `teacher_tokenizer`."""
    if examples and isinstance(examples[0], CrossExample):
        model = teacher if isinstance(teacher, torch.nn.Module) else getattr(teacher, "model", None)
        return _aligned_metrics(
            student, model, examples, teacher_tokenizer or tokenizer, tokenizer, batch_size,
            max_batches,
        )  # fmt: skip
    args = (examples, tokenizer, vocab_size, batch_size, max_batches, device, pad_id, chunk_size)
    if hasattr(teacher, "members") and hasattr(teacher, "eval_teacher"):
        return _several_metrics(student, teacher, args)
    return _token_metrics(student, teacher, *args)


def _several_metrics(student: torch.nn.Module, teacher: Any, args: tuple) -> dict[str, float]:
    """The mixture as "the teacher" (none when routed), then each member model alone."""
    result = _token_metrics(student, teacher.eval_teacher(), *args)
    for member in teacher.members:
        if not isinstance(getattr(member.teacher, "model", None), torch.nn.Module):
            continue  # a cache holds the training samples only
        alone = _token_metrics(student, member.teacher, *args)
        if not alone:
            continue
        prefix = f"teacher/{member.name}/"
        for key, value in alone.items():
            if key.startswith("teacher/"):
                result[prefix + key.removeprefix("teacher/")] = value
        result[prefix + "kl"] = alone["kl_teacher_student"]
        result[prefix + "agreement"] = alone["top1_agreement"]
    return result


def _token_metrics(
    student: torch.nn.Module,
    teacher: Any,
    examples: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    batch_size: int,
    max_batches: int | None,
    device: torch.device,
    pad_id: int,
    chunk_size: int | None,
) -> dict[str, float]:
    batches = eval_batches(examples, batch_size)[:max_batches]
    used = [ex for b in batches for ex in b]
    if not used:
        return {}
    ce_terms = Objective([TermSpec(kind="ce")], total_steps=1).active_terms(0)
    was_training = student.training
    student.eval()
    sums: dict[str, float] = {}
    agree_rows, targets = [], []
    for batch in batches:
        inputs = step_inputs(collate(batch, pad_id), device)
        signal = teacher_signal(teacher, inputs)
        rows = HiddenStates(student)(inputs.input_ids, inputs.attention_mask)[:, :-1][inputs.select]
        mask = torch.ones(rows.shape[0], dtype=torch.bool, device=device)
        out = distill_loss(
            rows,
            output_head(student),
            signal,
            inputs.labels,
            mask,
            ce_terms,
            vocab_size=vocab_size,
            normalizer=1.0,
            engine="torch",
            chunk_size=chunk_size,
        )
        for k, v in out.stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if isinstance(signal, TeacherSignal):
            s_top = row_argmax(rows, output_head(student), vocab_size)
            agree_rows.append(s_top == row_argmax(signal.hidden, signal.head, vocab_size))
            targets.append(inputs.labels)
    student.train(was_training)
    nbytes = target_bytes(used, tokenizer)
    tokens = sums["tokens"]
    result = {f"student/{k}": v for k, v in _summaries(sums["student_nll"], tokens, nbytes).items()}
    if teacher is not None:
        teacher_part = _summaries(sums["teacher_nll"], tokens, nbytes)
        result.update({f"teacher/{k}": v for k, v in teacher_part.items()})
        result["kl_teacher_student"] = sums["fkl"] / tokens
        result["top1_agreement"] = sums["agree"] / tokens
        if agree_rows:
            result.update(agreement_by_frequency(torch.cat(agree_rows), torch.cat(targets)))
    result["eval_tokens"] = tokens
    result["eval_bytes"] = float(nbytes)
    return result


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


def _aligned_metrics(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    examples: list[CrossExample],
    teacher_tok: Any,
    student_tok: Any,
    batch_size: int,
    max_batches: int | None,
) -> dict[str, float]:
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

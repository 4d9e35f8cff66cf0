"""Held-out metrics: cross-entropy, perplexity, bits per byte, teacher KL and agreement.

Bits per byte divides the summed negative log-likelihood (in bits) by the UTF-8 bytes the
target tokens spell, so students with different tokenizers compare on the same footing.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedTokenizerBase

from anydistill.data import collate, eval_batches
from anydistill.eval.frequency import agreement_by_frequency, row_argmax
from anydistill.losses.engine import TeacherSignal, distill_loss
from anydistill.losses.objective import Objective, TermSpec
from anydistill.models.heads import HiddenStates, output_head
from anydistill.train.step import step_inputs, teacher_signal


def target_bytes(examples: list[dict], tokenizer: PreTrainedTokenizerBase) -> int:
    """UTF-8 bytes spelled by the target tokens (special tokens spell none)."""
    total = 0
    for ex in examples:
        ids = [t for t, m in zip(ex["input_ids"][1:], ex["loss_mask"][1:], strict=True) if m]
        total += len(tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8"))
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
    teacher: torch.nn.Module | None,
    examples: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    batch_size: int,
    max_batches: int | None,
    device: torch.device,
    pad_id: int,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Student (and teacher) metrics over the first `max_batches` eval batches."""
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

"""Task accuracy: greedy answers to held-out prompts, scored by exact match."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anydistill.eval.answers import answers_match, extract_answer


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> list[str]:
    """Batched greedy decoding with left padding and the KV cache; stops at eos."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            bos + tokenizer(p, add_special_tokens=False)["input_ids"]
            for p in prompts[start : start + batch_size]
        ]
        width = max(len(c) for c in chunk)
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk], device=device)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in gen[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train(was_training)
    return outputs


def exact_match_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> float:
    """Share of records whose extracted final answer equals `record['answer']`."""
    if not records:
        return float("nan")
    texts = greedy_completions(
        model, tokenizer, [r["prompt"] for r in records], max_new_tokens, batch_size
    )
    hits = sum(
        answers_match(extract_answer(t), str(r["answer"]))
        for t, r in zip(texts, records, strict=True)
    )
    return hits / len(records)

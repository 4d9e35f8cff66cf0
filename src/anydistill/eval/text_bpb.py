"""Bits per byte of raw text, each model with its own tokenizer: the cross-tokenizer yardstick.

Per-token losses cannot compare models whose tokens differ; the total negative log-likelihood
of the same text, divided by its UTF-8 bytes, can. Each text is tokenized by the model's own
tokenizer (bos first when the tokenizer has one, so the first text token is scored too) and
every text token is scored; the byte count is the text's, identical for every model (without
a bos the first token is only context and its bytes are left out).

The bytes a token spells come from its span in the text (`anydistill.align.token_spans`), not
from decoding it: a decoder that strips the dummy-prefix space, a '▁' that stands for a space,
or a byte-fallback token holding part of a character would otherwise be miscounted.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from anydistill.align.chunks import token_spans
from anydistill.errors import ModelError
from anydistill.losses.chunk_math import head_logits
from anydistill.models.heads import HiddenStates, output_head


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], np.ndarray | None]:
    """The text's ids and each token's byte end in it (None for a slow tokenizer)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return tokenizer(text, add_special_tokens=False)["input_ids"], None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    try:
        spans = token_spans(tokenizer, text, ids, enc["offset_mapping"])
    except ModelError:
        return ids, None
    return ids, np.maximum.accumulate(np.maximum(spans[:, 1], 0)) if len(ids) else spans[:, 1]


def _counted_bytes(tokenizer, text: str, ids: list[int], ends, kept: int, bos: bool) -> int:
    """Bytes of `text` that the first `kept` tokens spell, less the first token's without a
    bos (it is context, not predicted)."""
    if ends is None:  # no spans: decode, as well as a slow tokenizer allows
        part = text if kept == len(ids) else tokenizer.decode(ids[:kept])
        first = 0 if bos else len(tokenizer.decode(ids[:1]).encode("utf-8"))
        return len(part.encode("utf-8")) - first
    if kept == len(ids):
        total = len(text.encode("utf-8"))
    else:
        total = int(ends[kept - 1]) if kept else 0
    return total - (0 if bos else int(ends[0]))


@torch.no_grad()
def text_bits_per_byte(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_len: int = 1024,
    batch_size: int = 8,
) -> dict[str, float]:
    """`bits_per_byte`, total `nll` (nats), `bytes` and `tokens` over `texts`.

    Texts longer than `max_len` tokens are cut at a token boundary; their bytes are counted
    up to that point (the bytes the kept tokens spell), so the ratio stays honest.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll, nbytes, ntokens = 0.0, 0, 0
    for start in range(0, len(texts), batch_size):
        rows = []
        for text in texts[start : start + batch_size]:
            ids, ends = _encode(tokenizer, text)
            kept = min(len(ids), max_len - len(bos))
            if not bos and kept < 2:
                continue
            rows.append(bos + ids[:kept])
            nbytes += _counted_bytes(tokenizer, text, ids, ends, kept, bool(bos))
        if not rows:
            continue
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        keep = mask[:, 1:].bool()
        hidden = HiddenStates(model)(ids, mask)[:, :-1][keep]
        targets = ids[:, 1:][keep]
        head = output_head(model)
        vocab = min(len(tokenizer), head.weight.shape[0])
        for i in range(0, hidden.shape[0], 512):  # never the whole batch's logits at once
            z = head_logits(hidden[i : i + 512], head, vocab)
            nll -= float(torch.log_softmax(z, -1).gather(1, targets[i : i + 512, None]).sum())
        ntokens += int(keep.sum())
    model.train(was_training)
    return {
        "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
        "nll": nll,
        "bytes": float(nbytes),
        "tokens": float(ntokens),
    }


def load_texts(path: str, column: str = "text") -> list[str]:
    """Texts from a .txt file (one per non-empty line) or a record file's `text` column."""
    from anydistill.data.loading import load_located
    from anydistill.data.records import string_column
    from anydistill.errors import DataError
    from anydistill.paths import check_readable_file, read_text

    hint = "give a .txt or .jsonl file"
    file = check_readable_file(path, "--texts", hint)
    if file.suffix == ".txt":
        return [line for line in read_text(file, "--texts", hint).splitlines() if line.strip()]
    ds, origin = load_located(str(file), field="--texts")
    if column not in ds.column_names:
        raise DataError(f"--texts: {path} has no `{column}` column; give a .txt or a text column")
    return string_column(ds, origin, column, "--texts")

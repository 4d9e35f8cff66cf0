"""Fit examples to `seq_len`: pack plain text into full blocks, or truncate/drop the rest."""

from __future__ import annotations

from collections.abc import Iterable

from anydistill.data.tokenize import Example


def pack(examples: Iterable[Example], seq_len: int) -> list[Example]:
    """Concatenate examples (their eos separators are already in place) and cut the stream
    into blocks of exactly `seq_len`. The final partial block is dropped unless it is the only
    block, in which case it is kept shorter so tiny datasets still train."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    ids: list[int] = []
    mask: list[bool] = []
    for ex in examples:
        ids.extend(ex["input_ids"])
        mask.extend(ex["loss_mask"])
    blocks = [
        Example(input_ids=ids[i : i + seq_len], loss_mask=mask[i : i + seq_len])
        for i in range(0, len(ids) - seq_len + 1, seq_len)
    ]
    if not blocks and ids:
        blocks.append(Example(input_ids=ids, loss_mask=mask))
    return blocks


def has_target(ex: Example) -> bool:
    """True if some token after the first is a target (position 0 is never predicted)."""
    return any(ex["loss_mask"][1:])


def truncate_or_drop(examples: Iterable[Example], seq_len: int) -> tuple[list[Example], int]:
    """Cut examples longer than `seq_len` from the right; drop those left without a target
    (and those that never had one). Returns (kept, number dropped) so the caller can warn."""
    kept: list[Example] = []
    dropped = 0
    for ex in examples:
        if len(ex["input_ids"]) > seq_len:  # other keys (a `route`) stay
            cut = {"input_ids": ex["input_ids"][:seq_len], "loss_mask": ex["loss_mask"][:seq_len]}
            ex = Example(**{**ex, **cut})
        if has_target(ex):
            kept.append(ex)
        else:
            dropped += 1
    return kept, dropped

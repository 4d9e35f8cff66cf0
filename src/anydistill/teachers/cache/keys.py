"""Content keys: a sample is known by what it contains, never by when it was seen.

Writer and reader compute the same key from the same tokens (input ids and which positions
predict a target), so a batch can only ever read the teacher rows of exactly its own text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import torch


def sample_key(input_ids: Iterable[int] | np.ndarray, targets: Iterable[bool] | np.ndarray) -> str:
    """sha256 (first 32 hex digits) of the ids and the target mask of positions 1..n-1."""
    h = hashlib.sha256()
    h.update(np.asarray(input_ids, dtype="<i8").tobytes())
    h.update(np.asarray(targets, dtype=np.uint8).tobytes())
    return h.hexdigest()[:32]


def batch_keys(input_ids: torch.Tensor, attention: torch.Tensor, select: torch.Tensor) -> list[str]:
    """Keys of the rows of a right-padded batch; `select` is loss_mask[:, 1:]."""
    ids, lengths, sel = input_ids.cpu().numpy(), attention.sum(1).tolist(), select.cpu().numpy()
    return [sample_key(ids[r, :n], sel[r, : n - 1]) for r, n in enumerate(lengths)]


def example_key(example: dict) -> str:
    return sample_key(example["input_ids"], example["loss_mask"][1:])


def dataset_fingerprint(keys: Iterable[str]) -> str:
    """One hash over the ordered sample keys."""
    h = hashlib.sha256()
    for key in keys:
        h.update(key.encode())
    return h.hexdigest()[:32]

"""Datasets -> token ids with loss masks -> packed/truncated examples -> batches.

The names below load their module on first use: the batch views the step and the losses read
(`data.views`, `data.aligned`, `data.collate`) then never pull in `datasets` and `pyarrow`,
which only reading records needs (a GPU box checking the loss need not have them).
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported now, not lazily: importing the submodule `data.collate` would otherwise leave the
# package attribute `collate` bound to that module instead of the function.
from anydistill.data.collate import collate as collate

_HOME = {
    "TokenizedData": "build",
    "holdout_split": "build",
    "load_raw": "build",
    "texts_for_tokenizer": "build",
    "tokenize_data": "build",
    "tokenize_dataset": "build",
    "load_records": "loading",
    "has_target": "packing",
    "pack": "packing",
    "truncate_or_drop": "packing",
    "BatchStream": "stream",
    "eval_batches": "stream",
    "Example": "tokenize",
    "detect_mode": "tokenize",
    "tokenize_chat": "tokenize",
    "tokenize_example": "tokenize",
}

__all__ = sorted([*_HOME, "collate"])


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'anydistill.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anydistill.data.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))

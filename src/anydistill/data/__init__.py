"""Datasets -> token ids with loss masks -> packed/truncated examples -> batches."""

from anydistill.data.build import (
    TokenizedData,
    holdout_split,
    load_raw,
    texts_for_tokenizer,
    tokenize_data,
    tokenize_dataset,
)
from anydistill.data.collate import collate
from anydistill.data.loading import load_records
from anydistill.data.packing import has_target, pack, truncate_or_drop
from anydistill.data.stream import BatchStream, eval_batches
from anydistill.data.tokenize import Example, detect_mode, tokenize_chat, tokenize_example

__all__ = [
    "BatchStream",
    "Example",
    "TokenizedData",
    "collate",
    "detect_mode",
    "eval_batches",
    "has_target",
    "holdout_split",
    "load_raw",
    "load_records",
    "pack",
    "texts_for_tokenizer",
    "tokenize_chat",
    "tokenize_data",
    "tokenize_dataset",
    "tokenize_example",
    "truncate_or_drop",
]

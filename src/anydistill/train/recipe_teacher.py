"""A recipe's teacher and training data without a run: what `anydistill prune` and
`anydistill convert` start from (a tokenizer the recipe trains lives in a scratch folder)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anydistill.config import RunConfig


@dataclass
class RecipeTeacher:
    tokenizer: Any
    examples: list  # the tokenized training sequences
    teacher: torch.nn.Module  # frozen, on `device`
    pad_id: int
    device: torch.device


def recipe_teacher(cfg: RunConfig) -> RecipeTeacher:
    from anydistill.data.prepare import load_run_data, prepare_examples
    from anydistill.models.from_config import load_model, pick_device
    from anydistill.models.loading import freeze
    from anydistill.models.run_tokenizers import teacher_tokenizer
    from anydistill.models.tokenizer import real_vocab_size

    device = pick_device(cfg.train.device)
    raw = load_run_data(cfg)
    with tempfile.TemporaryDirectory() as scratch:  # a tokenizer trained for the recipe
        tokenizer = teacher_tokenizer(cfg, Path(scratch), raw.texts(cfg))
    vocab = real_vocab_size(tokenizer)
    data = prepare_examples(raw, tokenizer, tokenizer, cfg, False)
    teacher = freeze(load_model(cfg.teacher, "teacher", vocab, device, True, cfg.train.seed + 1))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return RecipeTeacher(tokenizer, data.train, teacher, pad, device)

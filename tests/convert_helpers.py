"""Tiny seeded Llama-layout teachers and token batches for the conversion tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 96
SIZES = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": VOCAB,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
_EXTRA = {"qwen2": {"use_sliding_window": False}}


def tiny_teacher(model_type: str = "llama", layers: int = 2, seed: int = 0, **changes):
    """A random teacher in eval mode. Weights ~ N(0, 0.2) give peaked attention, as trained
    models have (the default 0.02 makes it nearly uniform); norm weights in [0.5, 1.5]."""
    config = AutoConfig.for_model(
        model_type,
        **{**SIZES, "num_hidden_layers": layers, **_EXTRA.get(model_type, {}), **changes},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


def token_batch(seed: int = 1, rows: int = 3, tokens: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (rows, tokens), generator=gen)


def pad_rows(ids: torch.Tensor, pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids` with `pad` pad tokens (id 0) added on `side` of every row, and its mask."""
    rows = ids.shape[0]
    pads = torch.zeros(rows, pad, dtype=ids.dtype)
    ones, zeros = torch.ones_like(ids), torch.zeros(rows, pad, dtype=torch.long)
    if side == "left":
        return torch.cat([pads, ids], 1), torch.cat([zeros, ones], 1)
    return torch.cat([ids, pads], 1), torch.cat([ones, zeros], 1)


def relative_mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).pow(2).mean() / target.pow(2).mean())

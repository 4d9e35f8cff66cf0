"""A recipe's `teacher:` / `student:` section -> a model on a device (and the device itself)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from anydistill.config import ModelConfig
from anydistill.errors import ConfigError, ModelError
from anydistill.models.loading import build_from_config, load_pretrained, resolve_dtype


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is `cuda` but no CUDA GPU is visible; use `auto` or `cpu`")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(
    mc: ModelConfig, field: str, vocab: int, device: torch.device, frozen: bool, seed: int
) -> PreTrainedModel:
    dtype = resolve_dtype(mc.dtype, device, frozen)
    if mc.path is not None:
        model = load_pretrained(
            mc.path,
            field=f"{field}.path",
            dtype=dtype,
            revision=mc.revision,
            trust_remote_code=mc.trust_remote_code,
            attn_implementation=mc.attn_implementation,
        )
    else:
        init = dict(mc.init or {})
        if mc.attn_implementation:
            init["attn_implementation"] = mc.attn_implementation
        model = build_from_config(init, field=field, vocab_size=vocab, dtype=dtype, seed=seed)
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise ModelError(
            f"{field}: its output layer has {rows} rows but the tokenizer has {vocab} tokens; "
            "the model and tokenizer do not belong together"
        )
    return model.to(device)

"""Load a causal LM from a hub id, a local directory, or a config dict (random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from anydistill.errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device, frozen: bool) -> torch.dtype:
    """`auto`: bf16 weights for a frozen teacher on GPU, fp32 everywhere else.

    A trained student keeps fp32 master weights; bf16 compute comes from autocast.
    """
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if (frozen and device.type == "cuda") else torch.float32


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists()


def load_pretrained(
    path: str,
    *,
    field: str,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load weights from a local directory or the hub; one clear sentence when it fails."""
    local = Path(path).expanduser()
    if _looks_local(path) and not local.is_dir():
        raise ModelError(f"{field}: {path} is not a directory; give a model directory or hub id")
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(local) if local.is_dir() else path, **kwargs
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{field}: cannot load a causal LM from {path!r} ({first})") from None


def build_from_config(
    init: dict[str, Any], *, field: str, vocab_size: int, dtype: torch.dtype, seed: int
) -> PreTrainedModel:
    """Random-weight model from a transformers config dict; vocab defaults to the tokenizer's."""
    params = dict(init)
    model_type = params.pop("model_type")
    params.setdefault("vocab_size", vocab_size)
    try:
        config = AutoConfig.for_model(model_type, **params)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{field}.init: not a valid `{model_type}` config ({err})") from None
    # Seed here so a recipe's random model is the same on every run and every rank.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except (ValueError, TypeError) as err:
            raise ModelError(f"{field}.init: cannot build a causal LM ({err})") from None
    return model


def max_positions(model: PreTrainedModel) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """The teacher: eval mode, no grads, ever."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

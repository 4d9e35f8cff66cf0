"""Tiny seeded decoder LMs and calibration batches for the pruning tests."""

from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"]
VOCAB = 96

_EXTRA = {
    "gemma2": {"query_pre_attn_scalar": 8, "sliding_window": 4},
    "gemma3_text": {"query_pre_attn_scalar": 8, "sliding_window": 4},
    "qwen2": {"use_sliding_window": False},
}


def tiny(model_type: str = "llama", seed: int = 0, **changes) -> torch.nn.Module:
    """A tiny random model in eval mode with weights large enough to make scores distinct."""
    sizes = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = AutoConfig.for_model(model_type, **{**sizes, **_EXTRA.get(model_type, {}), **changes})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.2)
            if param.dim() == 1 and "norm" in name:
                param.add_(1.0)
    return model.eval()


def batches(seed: int = 1, n: int = 2, rows: int = 2, tokens: int = 10) -> list:
    """Calibration batches; the last one right-pads its second row with id 0."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, VOCAB, (rows, tokens), generator=gen)
        mask = torch.ones(rows, tokens, dtype=torch.long)
        if i == n - 1:
            mask[1, tokens // 2 :] = 0
            ids[1, tokens // 2 :] = 0
        out.append((ids, mask))
    return out


def logits(model, ids: torch.Tensor | None = None) -> torch.Tensor:
    if ids is None:
        ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def zeroed(teacher, plan):
    """The teacher with the dropped heads' o_proj columns and dropped neurons' down_proj
    columns zeroed: same outputs as a student that pruned only heads and neurons."""
    model = copy.deepcopy(teacher)
    head_dim = plan.teacher.head_dim
    with torch.no_grad():
        for pos, layer in enumerate(plan.layers):
            block = model.model.layers[layer]
            for head in range(plan.teacher.num_attention_heads):
                if head not in plan.heads[pos]:
                    block.self_attn.o_proj.weight[:, head * head_dim : (head + 1) * head_dim] = 0
            for neuron in range(plan.teacher.intermediate_size):
                if neuron not in plan.neurons[pos]:
                    block.mlp.down_proj.weight[:, neuron] = 0
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())

"""Parameter counts of pruned shapes, read off the teacher's own weight list.

Counting through the same roles the slicer uses keeps the planned count equal to the built
model's, for every family and bias/tying variant, without building a model per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from anydistill.models.prune.families import Family, Shape, check_all_known, weight_role


@dataclass(frozen=True)
class Weight:
    name: str
    shape: tuple[int, ...]
    layer: int | None
    roles: tuple[str | None, ...]


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """A model of `config` with no storage: shapes only, built in milliseconds."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def layout(model: PreTrainedModel, family: Family) -> list[Weight]:
    """Every distinct parameter (tied ones once) with its layer and slicing roles."""
    check_all_known(model.state_dict(), family)  # buffers too: nothing may be left unsliced
    names = dict(model.named_parameters())
    out = []
    for name, param in names.items():
        layer, roles = weight_role(name, family)
        out.append(Weight(name, tuple(param.shape), layer, roles))
    return out


def role_size(role: str | None, shape: Shape, original: int) -> int:
    return {
        None: original,
        "ch": shape.hidden_size,
        "ff": shape.intermediate_size,
        "ff2": 2 * shape.intermediate_size,
        "q": shape.num_attention_heads * shape.head_dim,
        "kv": shape.num_key_value_heads * shape.head_dim,
        "qkv": (shape.num_attention_heads + 2 * shape.num_key_value_heads) * shape.head_dim,
    }[role]


def count(weights: list[Weight], shape: Shape, layers: list[int] | None = None) -> int:
    """Parameters of `shape` keeping teacher `layers` (all when None)."""
    kept = None if layers is None else set(layers)
    total = 0
    for w in weights:
        if w.layer is not None and kept is not None and w.layer not in kept:
            continue
        total += math.prod(role_size(r, shape, n) for r, n in zip(w.roles, w.shape, strict=True))
    return total


def embedding_count(weights: list[Weight], shape: Shape) -> int:
    """Parameters of the embedding and output head alone at `shape`."""
    top = [w for w in weights if w.layer is None and w.roles[0] is None]
    return count(top, shape)

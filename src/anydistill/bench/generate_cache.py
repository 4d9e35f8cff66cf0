"""The bytes a generation cache holds, for every cache transformers builds.

A Transformer's `DynamicCache` holds one key and one value tensor per layer, growing by one
position per token. The hybrid caches of linear-attention and state-space models
(`qwen3_5_text`, `bamba`, `mamba2`, ...) hold, per linear layer, a convolution state and a
recurrent state of fixed shape, in dicts keyed by state index, next to `DynamicLayer`s for
their attention layers. Rather than know each layer class, `cache_bytes` walks the cache
object: every tensor reachable through the attributes of transformers' cache objects and
their lists, tuples and dicts is counted once per storage (two views of one buffer are one
buffer), at the storage's full size (a sliding window's slice keeps its whole buffer alive).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch


def _is_cache_part(obj: object) -> bool:
    """An object of transformers' own cache machinery (not a module, config or stream)."""
    module = type(obj).__module__ or ""
    if not module.startswith("transformers."):
        return False
    from transformers import PretrainedConfig

    return not isinstance(obj, (torch.nn.Module, PretrainedConfig))


def _attributes(obj: object) -> list[Any]:
    values = list(getattr(obj, "__dict__", {}).values())
    for klass in type(obj).__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if hasattr(obj, slot):
                values.append(getattr(obj, slot))
    return values


def cache_tensors(cache: object) -> list[torch.Tensor]:
    """Every tensor the cache object holds, one per distinct storage (meta tensors left out)."""
    found: dict[tuple[str, int, int], torch.Tensor] = {}
    seen: set[int] = set()
    stack: list[Any] = [cache]
    while stack:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "meta":
                continue
            storage = obj.untyped_storage()
            # Empty storages share data_ptr 0; their id keeps them apart (they hold 0 bytes).
            ptr = storage.data_ptr()
            found.setdefault((str(obj.device), ptr, id(storage) if ptr == 0 else 0), obj)
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif _is_cache_part(obj):
            stack.extend(_attributes(obj))
    return list(found.values())


def cache_bytes(cache: object) -> int:
    """Bytes of every storage the cache object keeps alive."""
    return sum(t.untyped_storage().nbytes() for t in cache_tensors(cache))


def cache_layers(cache: object) -> dict[str, int]:
    """How many layers of each cache-layer class: `{"DynamicLayer": 1, "LinearAttentionLayer":
    3}` for a hybrid; `{"DynamicCache": 1}` for an older cache without per-layer objects."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, (list, tuple)):
        return {type(cache).__name__: 1}
    return dict(Counter(type(layer).__name__ for layer in layers))

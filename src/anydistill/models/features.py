"""Layer activations of a decoder, caught on the way through one forward.

Feature terms (`hidden`, `attention`) compare a student layer with a teacher layer. Both models
are read the same way, by forward hooks: a layer's hidden state is its decoder block's output
(for the last block: before the final norm), its attention output is what the block's
self-attention module returns before the residual add, and its attention map is the
probabilities that module returns as well (only eager attention returns them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from anydistill.errors import ConfigError
from anydistill.models.from_teacher import decoder_layers


@dataclass(frozen=True)
class Needs:
    """Which layers' activations a step's terms read, beyond the final hidden states."""

    hidden_layers: tuple[int, ...] = ()  # outputs of these decoder layers (0-based)
    attention_layers: tuple[int, ...] = ()  # the self-attention outputs of these layers
    map_layers: tuple[int, ...] = ()  # the attention probabilities of these layers

    def __bool__(self) -> bool:
        return bool(self.hidden_layers or self.attention_layers or self.map_layers)


NO_EXTRAS = Needs()


@dataclass
class Features:
    """Per-layer activations at the selected rows: hidden and attention `{layer: [N, H]}`,
    maps `{layer: [N, heads, T]}` (each selected query row's distribution over keys)."""

    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    maps: dict[int, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def capture(model: torch.nn.Module, needs: Needs, role: str) -> Iterator[Features]:
    """Hooks that fill a `Features` with the full `[B, T, ...]` activations `needs` lists
    while the block runs; `role` ("student"/"teacher") names the model in errors."""
    blocks = decoder_layers(model)
    found = Features()
    handles = []

    def check(i: int) -> None:
        if not 0 <= i < len(blocks):
            raise ConfigError(
                f"the {role} has {len(blocks)} decoder layers; layer {i} is not one (layers "
                "count from 0)"
            )

    def attention_module(i: int) -> torch.nn.Module:
        attn = getattr(blocks[i], "self_attn", None) or getattr(blocks[i], "attn", None)
        if attn is None:
            raise ConfigError(f"the {role}'s layer {i} has no attention module to read")
        return attn

    for i in needs.hidden_layers:
        check(i)

        def keep_hidden(_m, _a, out, i=i):
            found.hidden[i] = out[0] if isinstance(out, tuple) else out

        handles.append(blocks[i].register_forward_hook(keep_hidden))
    for i in sorted(set(needs.attention_layers) | set(needs.map_layers)):
        check(i)

        def keep_attention(_m, _a, out, i=i):
            first = out[0] if isinstance(out, tuple) else out
            if i in needs.attention_layers:
                found.attention[i] = first
            if i in needs.map_layers:
                probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
                if not isinstance(probs, torch.Tensor):
                    raise ConfigError(
                        f"the {role}'s attention does not return its probabilities; set "
                        f"{role}.attn_implementation: eager for an attention-map term"
                    )
                found.maps[i] = probs

        handles.append(attention_module(i).register_forward_hook(keep_attention))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def select_rows(features: Features, select: torch.Tensor) -> Features:
    """The rows that predict a target (`x[:, :-1][select]`) of every captured activation; a
    map keeps each selected query row's full key axis."""

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x[:, :-1][select]

    maps = {i: m.transpose(1, 2)[:, :-1][select] for i, m in features.maps.items()}
    return Features(
        {i: rows(x) for i, x in features.hidden.items()},
        {i: rows(x) for i, x in features.attention.items()},
        maps,
    )


def layer_count(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def hidden_width(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        if config is not None and isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise ConfigError(f"cannot read the hidden size of {type(model).__name__}'s config")

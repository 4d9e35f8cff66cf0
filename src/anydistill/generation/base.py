"""What every generation backend does: token-id prompts in, sampled token-id completions out.

Backends work on token ids, never on text, so a completion is exactly the tokens the model
sampled (no decode/encode round trip) and the loss mask can cover it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    """Sampling settings (from `source.generation`); temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 32


class Backend(Protocol):
    """A model that completes prompts; it always sees the model's current weights."""

    def generate(self, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
        """One completion per prompt: the new tokens only, ending with eos when one was
        sampled (nothing after it). The same seed and weights give the same tokens."""
        ...


def cut_at_eos(tokens: list[int], eos_id: int | None) -> list[int]:
    """Keep tokens up to and including the first eos (generate pads after it)."""
    if eos_id is not None and eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    return tokens

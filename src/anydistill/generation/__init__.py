"""Generation backends: sample completions of token-id prompts from the student or teacher.

`hf` (transformers generate, KV cache, batched, left padding) works everywhere; `vllm` is an
optional GPU extra. `make_backend` picks one from `source.generation.backend`.
"""

from __future__ import annotations

import torch

from anydistill.generation.base import Backend, Sampling, cut_at_eos
from anydistill.generation.hf import HFBackend
from anydistill.generation.seeding import derive_seed, forked_rng

__all__ = [
    "Backend",
    "HFBackend",
    "Sampling",
    "cut_at_eos",
    "derive_seed",
    "forked_rng",
    "make_backend",
]


def make_backend(
    name: str,
    model: torch.nn.Module,
    pad_id: int,
    eos_id: int | None,
    sampling: Sampling,
    live: bool,
) -> Backend:
    """`live=True` for the student: a vllm engine then re-syncs its weights before each use."""
    if name == "vllm":
        from anydistill.generation.vllm import VLLMBackend

        return VLLMBackend(model, eos_id, sampling, sync=live)
    return HFBackend(model, pad_id, eos_id, sampling)

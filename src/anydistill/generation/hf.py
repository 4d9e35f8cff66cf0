"""The `hf` backend: transformers `generate` with the KV cache, batched, left-padded.

It holds the model object itself, so for the student it always samples with the weights of
the current step (the optimizer updates them in place). The model is switched to eval mode
for sampling (no dropout) and back afterwards.
"""

from __future__ import annotations

import torch

from anydistill.generation.base import Sampling, cut_at_eos
from anydistill.generation.seeding import forked_rng


class HFBackend:
    """Samples completions from a transformers causal LM (the student or the teacher)."""

    def __init__(
        self, model: torch.nn.Module, pad_id: int, eos_id: int | None, sampling: Sampling
    ) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.sampling = sampling

    def _kwargs(self, max_new_tokens: int) -> dict:
        s = self.sampling
        kwargs = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_id,
            "use_cache": True,
        }
        if s.temperature == 0.0:
            return {**kwargs, "do_sample": False}
        # top_k=0 switches off transformers' default top-k of 50: plain temperature / top-p.
        return {
            **kwargs,
            "do_sample": True,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": 0,
        }

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out: list[list[int]] = []
        try:
            with forked_rng(seed, device):
                for start in range(0, len(prompts), self.sampling.batch_size):
                    out += self._batch(
                        prompts[start : start + self.sampling.batch_size], max_new_tokens, device
                    )
        finally:
            self.model.train(was_training)
        return out

    def _batch(
        self, prompts: list[list[int]], max_new_tokens: int, device: torch.device
    ) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        gen = self.model.generate(
            input_ids=ids, attention_mask=mask, **self._kwargs(max_new_tokens)
        )
        return [cut_at_eos(row.tolist(), self.eos_id) for row in gen[:, width:]]

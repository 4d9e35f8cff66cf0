"""Complete the prompts of a batch of examples with one model, and time it.

Every call is seeded from (run seed, role, key...), with `key` naming the call (the step and
micro-batch, or the upfront chunk), so the same call always samples the same tokens.
"""

from __future__ import annotations

import time

from anydistill.data.tokenize import Example
from anydistill.generation import Backend, derive_seed
from anydistill.sources.prompts import prompt_of, with_completion


class Completer:
    """`role` ("teacher" or "student") names the model in seeds and error messages."""

    def __init__(
        self,
        backend: Backend,
        role: str,
        seq_len: int,
        max_new_tokens: int,
        eos_id: int | None,
        seed: int,
    ) -> None:
        self.backend = backend
        self.role = role
        self.seq_len = seq_len
        self.max_new_tokens = max_new_tokens
        self.eos_id = eos_id
        self.seed = seed
        self.seconds = 0.0  # total time spent generating

    def complete(self, examples: list[Example], *key: int | str) -> list[Example]:
        """The examples' prompts with freshly sampled completions (targets: exactly those)."""
        prompts = [prompt_of(ex) for ex in examples]
        # Never sample past seq_len: the longest prompt sets the room left in this batch.
        room = self.seq_len - max(len(p) for p in prompts)
        budget = max(1, min(self.max_new_tokens, room))
        tick = time.perf_counter()
        outs = self.backend.generate(prompts, budget, derive_seed(self.seed, self.role, *key))
        self.seconds += time.perf_counter() - tick
        fallback = [self.eos_id] if self.eos_id is not None else []
        return [
            with_completion(p, out or fallback, self.seq_len)
            for p, out in zip(prompts, outs, strict=True)
        ]

"""A small seeded RNG whose whole state is plain JSON, for checkpoints (numpy's PCG64)."""

from __future__ import annotations

from typing import Any

import numpy as np


class SourceRng:
    """Coin flips and buffer draws of a source; `state_dict` round-trips exactly."""

    def __init__(self, seed: int) -> None:
        self._gen = np.random.Generator(np.random.PCG64(seed))

    def uniform(self) -> float:
        return float(self._gen.random())

    def coin(self, p: float) -> bool:
        """True with probability p (p = 0 never, p = 1 always)."""
        return self.uniform() < p

    def sample(self, n: int, k: int) -> list[int]:
        """k distinct indices of range(n), in random order."""
        return [int(i) for i in self._gen.choice(n, size=k, replace=False)]

    def state_dict(self) -> dict[str, Any]:
        return self._gen.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gen.bit_generator.state = state

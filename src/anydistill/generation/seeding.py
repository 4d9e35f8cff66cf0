"""Seeds for sampling that depend only on (run seed, purpose, step, ...), not on history.

Generation runs under its own forked RNG, so it neither consumes nor depends on the global
RNG the trainer saves in checkpoints: a resumed run samples exactly what an unbroken one
does, and upfront generation can stop and continue chunk by chunk.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from ints and strings (strings through crc32, stable across runs)."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) & 0xFFFFFFFF for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG seeded to `seed`; the outer RNG state is restored after."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

"""Fixed-size binary rows for one token's top-k: packed ids, quantized log-probs, tail mass.

Row layout (little-endian), `row_bytes` long:

- float32 log-prob of the top-1 token, float32 log of the tail mass (1 - sum of the top-k);
- k ids of ceil(log2 V) bits each, packed MSB first;
- k - 1 gaps `logp_top1 - logp_i` (i = 2..k, non-negative because ids are sorted by
  probability), each `value_bits` wide: 8/12/16 bits quantize [0, max_gap] uniformly
  (larger gaps clamp to max_gap), 32 stores them as float32 (lossless).

Decoding renormalizes the k + 1 outcomes (top-k plus tail) to sum to one, so quantization
never leaves the loss a distribution with the wrong total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

VALUE_BITS = (8, 12, 16, 32)


def _pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """[n, m] unsigned ints < 2**bits -> [n, ceil(m * bits / 8)] bytes, MSB first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    expanded = (values.astype(np.uint64)[..., None] >> shifts) & 1
    return np.packbits(expanded.astype(np.uint8).reshape(values.shape[0], -1), axis=1)


def _unpack_bits(packed: np.ndarray, m: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(packed, axis=1, count=m * bits).reshape(packed.shape[0], m, bits)
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    return (flat.astype(np.uint64) * weights).sum(axis=2)


@dataclass(frozen=True)
class Codec:
    k: int
    vocab_size: int
    value_bits: int = 12
    max_gap: float = 20.0  # nats below the top-1 that quantized values can express

    def __post_init__(self) -> None:
        if self.value_bits not in VALUE_BITS:
            raise ValueError(f"value_bits must be one of {VALUE_BITS}, got {self.value_bits}")
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"k must be between 1 and the vocabulary ({self.vocab_size})")

    @property
    def id_bits(self) -> int:
        return max(1, math.ceil(math.log2(self.vocab_size)))

    @property
    def id_bytes(self) -> int:
        return math.ceil(self.k * self.id_bits / 8)

    @property
    def gap_bytes(self) -> int:
        return math.ceil((self.k - 1) * self.value_bits / 8)

    @property
    def row_bytes(self) -> int:
        return 8 + self.id_bytes + self.gap_bytes

    def encode(self, ids: Tensor, logp: Tensor, log_tail: Tensor) -> np.ndarray:
        """[n, k] ids and log-probs sorted by descending probability, [n] tail -> [n, row]."""
        n = ids.shape[0]
        head = np.stack(
            [logp[:, 0].float().cpu().numpy(), log_tail.float().cpu().numpy()], axis=1
        ).astype("<f4")
        parts = [head.view(np.uint8).reshape(n, 8)]
        parts.append(_pack_bits(ids.cpu().numpy().astype(np.uint64), self.id_bits))
        if self.k > 1:
            gaps = (logp[:, :1] - logp[:, 1:]).double().clamp(min=0.0).cpu().numpy()
            if self.value_bits == 32:
                parts.append(gaps.astype("<f4").view(np.uint8).reshape(n, -1))
            else:
                levels = (1 << self.value_bits) - 1
                q = np.rint(np.minimum(gaps, self.max_gap) / self.max_gap * levels)
                parts.append(_pack_bits(q.astype(np.uint64), self.value_bits))
        return np.ascontiguousarray(np.concatenate(parts, axis=1))

    def decode(self, rows: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """[n, row] bytes -> ids [n, k] int64, log-probs [n, k] and log tail [n] (float32)."""
        rows = np.ascontiguousarray(rows)
        n = rows.shape[0]
        head = rows[:, :8].copy().view("<f4").reshape(n, 2).astype(np.float64)
        ids = _unpack_bits(rows[:, 8 : 8 + self.id_bytes], self.k, self.id_bits)
        logp = np.empty((n, self.k), dtype=np.float64)
        logp[:, 0] = head[:, 0]
        if self.k > 1:
            packed = rows[:, 8 + self.id_bytes :]
            if self.value_bits == 32:
                gaps = packed.copy().view("<f4").reshape(n, self.k - 1).astype(np.float64)
            else:
                levels = (1 << self.value_bits) - 1
                gaps = _unpack_bits(packed, self.k - 1, self.value_bits) * (self.max_gap / levels)
            logp[:, 1:] = head[:, :1] - gaps
        both = torch.from_numpy(np.concatenate([logp, head[:, 1:]], axis=1))
        both = torch.log_softmax(both, dim=1)  # k + 1 outcomes summing to one again
        return torch.from_numpy(ids.astype(np.int64)), both[:, :-1].float(), both[:, -1].float()

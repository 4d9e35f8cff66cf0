"""Deterministic, resumable micro-batches, sharded across data-parallel ranks.

The order depends only on (seed, epoch), never on the global RNG, so a resumed run and a run
with a different number of ranks (same global batch) see the same examples in the same order.
"""

from __future__ import annotations

from typing import Any

import torch

from anydistill.data.tokenize import Example
from anydistill.errors import DataError

_EPOCH_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs do not collide for small values


class BatchStream:
    """Endless iterator of micro-batches (lists of examples) for one rank.

    In epoch e the examples are permuted with a generator seeded `seed * 1_000_003 + e`;
    global micro-batch j covers perm[j*B*W : (j+1)*B*W] and rank r takes the slice
    [r*B : (r+1)*B] of it. A remainder smaller than B*W is skipped (next epoch).
    """

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad stream shape: batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        global_batch = batch_size * world_size
        if len(examples) < global_batch:
            raise DataError(
                f"data: the training set has {len(examples)} examples, fewer than one global "
                f"batch ({batch_size} x {world_size}); lower train.micro_batch_size or add data"
            )
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.batches_per_epoch = len(examples) // global_batch
        self._epoch = 0
        self._cursor = 0  # global micro-batches already taken in the current epoch
        self._perm: list[int] | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def _permutation(self) -> list[int]:
        if self._perm is None:
            n = len(self.examples)
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self._epoch)
                self._perm = torch.randperm(n, generator=gen).tolist()
            else:
                self._perm = list(range(n))
        return self._perm

    def next_batch(self) -> list[Example]:
        """This rank's share of the next global micro-batch."""
        if self._cursor >= self.batches_per_epoch:
            self._epoch += 1
            self._cursor = 0
            self._perm = None
        perm = self._permutation()
        start = self._cursor * self.batch_size * self.world_size + self.rank * self.batch_size
        self._cursor += 1
        return [self.examples[i] for i in perm[start : start + self.batch_size]]

    def peek(self, count: int) -> list[list[Example]]:
        """The next `count` batches `next_batch` will give, without taking them: the
        position (what a checkpoint saves) stays where it was."""
        saved = (self._epoch, self._cursor, self._perm)
        try:
            return [self.next_batch() for _ in range(count)]
        finally:
            self._epoch, self._cursor, self._perm = saved

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> list[Example]:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """The position in the stream; save it with a checkpoint."""
        return {"epoch": self._epoch, "cursor": self._cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that saved `state` was."""
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        if epoch < 0 or not 0 <= cursor <= self.batches_per_epoch:
            raise DataError(
                f"checkpoint data position {state} does not fit this dataset "
                f"({self.batches_per_epoch} batches per epoch); resume with the same data and "
                "batch size or start a fresh run"
            )
        self._epoch, self._cursor, self._perm = epoch, cursor, None


def eval_batches(examples: list[Example], batch_size: int) -> list[list[Example]]:
    """All examples in their fixed order, in batches; the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]

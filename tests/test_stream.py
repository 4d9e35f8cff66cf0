"""BatchStream: deterministic, rank-sharded, resumable micro-batches."""

from __future__ import annotations

import pytest
import torch

from anydistill.data import BatchStream, Example, eval_batches
from anydistill.errors import DataError


def examples(n: int) -> list[Example]:
    return [Example(input_ids=[i], loss_mask=[True]) for i in range(n)]


def ids(batch: list[Example]) -> list[int]:
    return [ex["input_ids"][0] for ex in batch]


def take(stream: BatchStream, k: int) -> list[list[int]]:
    return [ids(stream.next_batch()) for _ in range(k)]


def test_deterministic_and_independent_of_global_rng():
    torch.manual_seed(0)
    a = take(BatchStream(examples(37), 4, seed=5), 30)
    torch.manual_seed(123)
    torch.rand(10)
    b = take(BatchStream(examples(37), 4, seed=5), 30)
    assert a == b
    assert take(BatchStream(examples(37), 4, seed=6), 30) != a


def test_ranks_are_disjoint_and_union_is_the_global_batch():
    data = examples(50)
    single = BatchStream(data, 6, seed=1)  # global batch 6 on one rank
    ranks = [BatchStream(data, 2, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(20):  # crosses epochs (8 global batches per epoch)
        parts = [ids(s.next_batch()) for s in ranks]
        flat = [i for p in parts for i in p]
        assert len(set(flat)) == 6
        assert flat == ids(single.next_batch())


def test_resume_continues_identically():
    ref = BatchStream(examples(29), 3, seed=2)
    take(ref, 13)  # past the first epoch boundary (9 batches per epoch)
    state = ref.state_dict()
    assert state == {"epoch": 1, "cursor": 4}
    resumed = BatchStream(examples(29), 3, seed=2)
    resumed.load_state_dict(state)
    assert take(resumed, 20) == take(ref, 20)
    with pytest.raises(DataError, match="does not fit this dataset"):
        resumed.load_state_dict({"epoch": 0, "cursor": 99})


def test_epoch_rollover_drops_the_remainder():
    stream = BatchStream(examples(10), 3, seed=0)
    first = take(stream, 3)
    assert stream.epoch == 0
    assert len({i for b in first for i in b}) == 9  # a permutation: no repeats in an epoch
    second = take(stream, 3)
    assert stream.epoch == 1 and first != second
    unshuffled = BatchStream(examples(10), 3, seed=0, shuffle=False)
    assert take(unshuffled, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 1, 2]]


def test_too_few_examples():
    with pytest.raises(DataError, match=r"has 5 examples, fewer than one global batch \(4 x 2\)"):
        BatchStream(examples(5), 4, seed=0, world_size=2)


def test_eval_batches_keep_all_in_order():
    batches = eval_batches(examples(7), 3)
    assert [ids(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]

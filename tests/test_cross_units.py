"""`term_units`: the number each cross term's sum runs over, from the aligned batch alone.

The trainer needs every term's normalizer before the first backward (summed over
micro-batches and ranks), so it cannot wait for `cross_loss`'s count; `term_units` must give
the same number from `CrossTokens` (no hidden states, no models): every usable chunk for alm
and gold_hybrid, the usable one-to-one chunks for uld and mined.
"""

from __future__ import annotations

import random

import pytest
import torch
from test_align import train_tokenizers
from test_cross_losses import _batch, _params, _problem

from anydistill.align import random_texts
from anydistill.losses.cross import (
    CROSS_TERMS,
    TERM_UNITS,
    build_cross_batch,
    cross_loss,
    prepare_cross_params,
    term_units,
)
from anydistill.losses.engine import Head

KINDS = list(CROSS_TERMS)


@pytest.fixture(scope="module")
def toks():
    return train_tokenizers()


def _heads(tokens, seed: int):
    g = torch.Generator().manual_seed(seed)
    n_s, n_t = int(tokens.student_attention.sum()), int(tokens.teacher_attention.sum())
    hidden = torch.randn(n_s, 8, generator=g)
    weight = torch.randn(tokens.student_vocab, 8, generator=g)
    t_hidden = torch.randn(n_t, 6, generator=g)
    t_weight = torch.randn(tokens.teacher_vocab, 6, generator=g)
    return tokens.batch(hidden, t_hidden), Head(weight), Head(t_weight)


def test_every_term_has_units():
    assert set(TERM_UNITS) == set(CROSS_TERMS)
    with pytest.raises(ValueError, match="unknown cross-tokenizer term"):
        term_units("ce", None)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("teacher,student", [("metaspace", "byte_level"), ("unigram", "bytes")])
def test_units_equal_cross_loss_count_on_aligned_batches(toks, tmp_path, seed, teacher, student):
    rng = random.Random(seed)
    texts = list(random_texts(rng.randint(1, 4), seed=seed))
    texts += ["The quick brown fox  jumps\tover 12345 😀"] if seed % 2 else []
    tokens = build_cross_batch(toks[teacher], toks[student], texts, max_len=rng.randint(4, 40))
    batch, s_head, t_head = _heads(tokens, seed)
    seen = {}
    for kind in KINDS:
        params = prepare_cross_params(kind, toks[teacher], toks[student], cache_dir=tmp_path)
        with torch.no_grad():
            _, count = cross_loss(kind, batch, s_head, t_head, params)
        assert term_units(kind, tokens) == count == term_units(kind, batch), kind
        seen[kind] = count
    # as the data is built today every chunk is usable: alm's units are n_chunks
    assert seen["alm"] == seen["gold_hybrid"] == tokens.n_chunks
    assert seen["uld"] == seen["mined"] <= tokens.n_chunks


@pytest.mark.parametrize("seed", range(6))
def test_units_equal_cross_loss_count_on_random_chunk_structures(seed):
    """Chunks with a masked row, no row on one side, or a row without a target."""
    s, t, c_off, student, teacher = _problem(seed, pairs=3)
    batch = _batch(s, t, c_off, student, teacher)
    s_head = Head(student["weight"], student["bias"])
    t_head = Head(teacher["weight"], teacher["bias"])
    for kind in KINDS:
        with torch.no_grad():
            _, count = cross_loss(kind, batch, s_head, t_head, _params(kind, seed))
        assert term_units(kind, batch) == count, kind
    assert term_units("uld", batch) <= term_units("alm", batch) <= batch.n_chunks


def test_one_to_one_share_sets_the_gap(toks):
    """A shared tokenizer makes every chunk one-to-one: the two units agree; a byte tokenizer
    against multi-byte tokens does not."""
    tok = toks["byte_level"]
    tokens = build_cross_batch(tok, tok, ["same tokenizer, same chunks 123"], max_len=32)
    assert term_units("uld", tokens) == term_units("alm", tokens) == tokens.n_chunks > 5
    other = build_cross_batch(tok, toks["bytes"], ["same text, byte tokens 123"], max_len=64)
    assert term_units("mined", other) < term_units("gold_hybrid", other) == other.n_chunks

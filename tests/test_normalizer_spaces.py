"""Tokenizers that mark spaces with '▁' through their NORMALIZER, not a Metaspace pre-tokenizer.

Several SentencePiece-derived families ship a tokenizer.json whose normalizer turns every
space into '▁' (`Replace(" ", "▁")`, often after `Prepend("▁")` or `Prepend(" ")`), with no
pre-tokenizer or a `Split` one, and a decoder that turns '▁' back into a space. Gemma-style
files also list whitespace runs ('▁▁', '▁▁▁', ...) as added tokens that the model itself
produces from runs of spaces. Each variant is built here with the `tokenizers` library, as
those families ship it, and checked: the alignment, the bytes each token spells, bits per
byte, and the vocabulary maps (GOLD's byte-identical pairs, MinED, the whitespace mask) must
all read '▁' as a space.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
from tokenizers import pre_tokenizers as pre
from transformers import PreTrainedTokenizerFast

from anydistill.align import (
    align_ids,
    align_texts,
    byte_lengths,
    check_pair,
    random_texts,
    token_bytes,
    token_view,
    verify,
)
from anydistill.losses.cross import compute_mined_map, space_mask, vocab_intersection

try:
    from anydistill.models.tokenizer_training import train_tokenizer
except ImportError:  # before the move
    from anydistill.demo.tokenizer import train_tokenizer  # type: ignore[no-redef]

try:
    from anydistill.data.aligned import text_example
except ImportError:  # before the move
    from anydistill.losses.cross.batch import text_example  # type: ignore[no-redef]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers"
REAL = ["gpt2", "llama3", "olmo2", "phi3", "t5", "bert"]

_LINES = [
    "The quick brown fox jumps over the lazy dog. Don't panic!",
    "the cat and the dog and the bird sat on the mat",
    "Привет мир, 你好世界 12345 67890 naïve café",
    "tabs\tand\nnewlines  double  spaces   triple    four",
    "def f(x):\n    return x  # two\n        deeper\n",
    "  leading spaces and trailing ones  ",
]
_WS_RUNS = ["▁▁", "▁▁▁", "▁▁▁▁"]  # Gemma lists these as (non-normalized) added tokens
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_STRIP = [decoders.Fuse(), decoders.Strip(" ", 1, 0)]


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = " ".join(_LINES).split(" ")
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(300)]
    return _LINES * 20 + lines


def _decoder(strip: bool):
    tail = _STRIP if strip else [decoders.Fuse()]
    return decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), *tail])


def _train(model: str, normalizer, pre_tokenizer, strip: bool) -> Tokenizer:
    """A BPE or Unigram model on the corpus, with `<0xNN>` byte-fallback pieces added."""
    specials = ["<unk>", "<s>", "</s>"]
    if model == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=320, special_tokens=specials, unk_token="<unk>", show_progress=False
        )
    tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.decoder = _decoder(strip)
    tok.train_from_iterator(_corpus(), trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if model == "bpe":
        for piece in _BYTES:
            vocab.setdefault(piece, len(vocab))
    else:
        have = {p for p, _ in vocab}
        vocab += [[p, -30.0] for p in _BYTES if p not in have]
    spec["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _prepend_bpe() -> Tokenizer:
    """Llama-2 / Mistral style: Prepend('▁') + Replace(' ', '▁'), no pre-tokenizer."""
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok = _train("bpe", norm, None, strip=True)
    assert tok.token_to_id("zebra") is None
    tok.add_tokens([AddedToken("zebra", normalized=True)])  # matched as '▁zebra' = ' zebra'
    tok.add_special_tokens([AddedToken("<|sep|>", normalized=False, special=True)])
    return tok


def _gemma_bpe() -> Tokenizer:
    """Gemma style: Replace(' ', '▁') only, a Split(' ') pre-tokenizer, whitespace runs as
    non-normalized added tokens that are also model pieces (the model emits them)."""
    tok = _train(
        "bpe", normalizers.Replace(" ", "▁"), pre.Split(" ", "merged_with_previous"), strip=False
    )
    runs = [r for r in _WS_RUNS if tok.token_to_id(r) is not None]
    assert runs, "the corpus should teach the model runs of spaces"
    extra = ["\n\n", "\t\t", "<table>"]
    tok.add_tokens([AddedToken(r, normalized=False, special=False) for r in runs + extra])
    tok.add_special_tokens([AddedToken("<start_of_turn>", normalized=False, special=True)])
    return tok


def _space_prepend_unigram() -> Tokenizer:
    """Helium style: Prepend(' ') then Replace(' ', '▁') (the dummy prefix is a space),
    Unigram with byte fallback, a Split('\\n') pre-tokenizer."""
    norm = normalizers.Sequence([normalizers.Prepend(" "), normalizers.Replace(" ", "▁")])
    return _train("unigram", norm, pre.Split("\n", "contiguous"), strip=True)


def _replace_unigram() -> Tokenizer:
    """Plain Replace(' ', '▁'), no pre-tokenizer, Unigram with byte fallback."""
    return _train("unigram", normalizers.Replace(" ", "▁"), None, strip=False)


def _regex_prefix_bpe() -> Tokenizer:
    """transformers' generic SentencePiece conversion (legacy, add_dummy_prefix): Replace(' ',
    '▁'), Replace(/\\A▁/, '▁▁'), then a non-splitting Metaspace that prepends '▁' always."""
    norm = normalizers.Sequence(
        [normalizers.Replace(" ", "▁"), normalizers.Replace(Regex(r"\A▁"), "▁▁")]
    )
    meta = pre.Sequence([pre.Metaspace("▁", prepend_scheme="always", split=False)])
    return _train("bpe", norm, meta, strip=True)


BUILDERS = {
    "prepend_bpe": _prepend_bpe,
    "gemma_bpe": _gemma_bpe,
    "space_prepend_unigram": _space_prepend_unigram,
    "replace_unigram": _replace_unigram,
    "regex_prefix_bpe": _regex_prefix_bpe,
}
NAMES = list(BUILDERS)
DUMMY = {"prepend_bpe", "space_prepend_unigram", "regex_prefix_bpe"}


class _Toks(dict):
    def __repr__(self) -> str:
        return "<normalizer-space tokenizers>"


@pytest.fixture(scope="module")
def toks() -> dict:
    out = _Toks({name: _wrap(build()) for name, build in BUILDERS.items()})
    out["byte_level"] = train_tokenizer(_corpus(), vocab_size=520)
    return out


TRICKY = [
    "",
    " ",
    "   ",
    "  x",
    " Hello  world ",
    "the   quick    brown",
    "\n\n  indented\n\tand\ttabs\t\t\n",
    "a" + " " * 17 + "b",
    "def f(x):\n    return x\n",
    "zebra quick zebra  zebra the zebras",
    "ünïcödé Ωμέγα 日本語 🤖 👍🏽",
    "byte fallback: ☃ ∰ 𝔘 ꙮ",
    "literal ▁ marker ▁▁ here",
    "<|sep|> special <start_of_turn> and <table> added",
    "\r\n \u3000 \xa0 odd spaces",
]


# ---- the bytes each token spells ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_marker_reads_as_space_in_every_token(toks, name):
    tok = toks[name]
    view = token_view(tok)
    assert view.info.family == "metaspace" and view.info.lossless
    assert view.info.dummy_prefix == (name in DUMMY)
    spelled = token_bytes(tok)
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    marked = [(p, i) for p, i in vocab.items() if "▁" in p and not view.is_special[i]]
    assert len(marked) > 20
    for piece, i in marked:
        assert spelled[i] == piece.replace("▁", " ").encode(), piece
    for b in range(256):
        assert spelled[vocab[f"<0x{b:02X}>"]] == bytes([b])
    if name == "gemma_bpe":  # the whitespace runs the model emits are spaces
        for run in _WS_RUNS:
            if run in vocab:
                assert spelled[vocab[run]] == b" " * len(run)
        assert spelled[vocab["\n\n"]] == b"\n\n" and spelled[vocab["<table>"]] == b"<table>"
        assert spelled[vocab["<start_of_turn>"]] is None
    if name == "prepend_bpe":  # a normalized added token spells its normalized content
        assert spelled[vocab["zebra"]] == b" zebra"


# ---- alignment ----------------------------------------------------------------------------

PAIRS = [(n, n) for n in NAMES] + [(n, "byte_level") for n in NAMES]
PAIRS += [("byte_level", n) for n in NAMES]
PAIRS += [(a, b) for a, b in itertools.permutations(NAMES, 2) if a < b]


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_check_pair_passes(toks, teacher, student):
    t, s = toks[teacher], toks[student]
    for text in TRICKY:
        pair = align_texts(t, s, text)
        assert verify(pair, t, s) == [], (text, verify(pair, t, s))
        if teacher == student:
            assert bool(pair.alignment.one_to_one_mask().all()), text
    result = check_pair(t, s, n=150, seed=11)
    assert result["mismatches"] == 0, result["examples"]


@pytest.mark.parametrize("name", NAMES)
def test_runs_of_spaces_are_spelled_by_the_tokens(toks, name):
    """The tokens of a text made of space runs spell exactly its bytes (plus the dummy '▁'
    these families always prepend)."""
    tok = toks[name]
    view = token_view(tok)
    dummy = b" " if view.info.dummy_prefix else b""
    for text in ["   a", "a    b", "x\n   y", "  \t  z  ", "          ", "\u2603  \u2603"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        spelled = b"".join(view.token_bytes[i] for i in ids)
        assert spelled == dummy + text.encode(), (text, spelled)


@pytest.mark.parametrize("name", NAMES)
def test_align_ids_agrees_with_align_texts(toks, name):
    for other in ("byte_level", name):
        for text in TRICKY[:12]:  # not a literal marker: it reads as a space
            pair = align_texts(toks[name], toks[other], text)
            al = align_ids(toks[name], toks[other], pair.teacher_ids, pair.student_ids)
            assert torch.equal(al.teacher_chunk, pair.alignment.teacher_chunk), (other, text)
            assert torch.equal(al.student_chunk, pair.alignment.student_chunk), (other, text)


# ---- bits per byte --------------------------------------------------------------------------


def _chunk_token_bytes(view, ids: np.ndarray, chunk: np.ndarray, n: int) -> np.ndarray:
    """Bytes the tokens of each chunk spell, by `token_view(...).token_bytes`."""
    out = np.zeros(n, dtype=np.int64)
    for i, c in zip(ids.tolist(), chunk.tolist(), strict=True):
        if c >= 0:
            out[c] += len(view.token_bytes[i])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_aligned_chunk_bytes_equal_the_text_bytes(toks, name):
    """Bits per byte divides by the aligned chunks' bytes: they must be the text's bytes, and
    the bytes the tokens spell (a '▁' is one space byte; only a dummy prefix is extra)."""
    tok, other = toks[name], toks["byte_level"]
    tv, ov = token_view(tok), token_view(other)
    texts = TRICKY + list(random_texts(60, seed=3))
    for text in texts:
        if "▁" in text or "<" in text:
            continue  # a literal marker reads as a space by design; added tokens spell none
        ex = text_example(tok, other, text, add_special_tokens=False)
        assert int(ex.chunk_bytes.sum()) == len(text.encode()), text
        n = ex.n_chunks
        got_t = _chunk_token_bytes(tv, ex.teacher_ids, ex.teacher_chunk, n)
        got_s = _chunk_token_bytes(ov, ex.student_ids, ex.student_chunk, n)
        assert np.array_equal(got_s, ex.chunk_bytes), text
        extra = got_t - ex.chunk_bytes  # these families prepend '▁' to every text
        if n:
            assert extra[0] == int(tv.info.dummy_prefix) and extra[1:].sum() == 0, (text, extra)


@pytest.mark.parametrize("name", [*NAMES, "byte_level"])
def test_byte_lengths_from_ids_add_up_to_the_text(toks, name):
    """Same-tokenizer bits per byte counts the target tokens' bytes from their ids."""
    tok = toks[name]
    for text in TRICKY + list(random_texts(60, seed=4)):
        if "▁" in text or "<" in text:
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        lengths = byte_lengths(tok, ids)
        assert int(lengths.sum()) == len(text.encode()), text
        with_bos = byte_lengths(tok, [tok.bos_token_id, *ids])
        assert with_bos[0] == 0 and int(with_bos.sum()) == len(text.encode()), text


@pytest.mark.parametrize("name", NAMES)
def test_text_bits_per_byte_counts_marker_tokens_as_spaces(toks, name):
    from transformers import GPT2Config, GPT2LMHeadModel

    from anydistill.eval.text_bpb import text_bits_per_byte

    backend = Tokenizer.from_str(toks[name].backend_tokenizer.to_str())
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")  # no bos
    assert tok.bos_token_id is None  # the first token is context: its bytes do not count
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2)
    )
    texts = ["   spaced   out", "\u2603 snow", "\n\n  indented", "the quick   fox", "\u2603\u2603"]
    got = text_bits_per_byte(model, tok, texts, batch_size=2)
    view = token_view(tok)
    want = 0
    for text in texts:
        first = view.token_bytes[tok(text, add_special_tokens=False)["input_ids"][0]]
        want += len(text.encode()) - (len(first) - int(view.info.dummy_prefix))
    assert got["bytes"] == want
    long = "the quick  brown\u2603fox   jumps " * 4
    ids = tok(long, add_special_tokens=False)["input_ids"]
    cut = text_bits_per_byte(model, tok, [long], max_len=9)  # 9 tokens kept, 8 scored
    assert cut["tokens"] == 8 and len(ids) > 9
    assert cut["bytes"] == sum(len(view.token_bytes[i]) for i in ids[1:9])


# ---- vocabulary maps ------------------------------------------------------------------------


def _word_pair(tok, bl) -> tuple[int, int]:
    """Ids of one word with a leading space in both vocabularies ('▁the' and 'Ġthe')."""
    for word in ("the", "quick", "and", "dog", "cat", "fox"):
        a = tok.backend_tokenizer.token_to_id("▁" + word)
        b = bl.backend_tokenizer.token_to_id("Ġ" + word)
        if a is not None and b is not None:
            return a, b
    raise AssertionError("no common word with a leading space")


@pytest.mark.parametrize("name", NAMES)
def test_vocab_maps_read_the_marker_as_space(toks, name):
    tok, bl = toks[name], toks["byte_level"]
    the, g_the = _word_pair(tok, bl)
    t_ids, s_ids = vocab_intersection(tok, bl)
    pairs = dict(zip(t_ids.tolist(), s_ids.tolist(), strict=True))
    assert pairs[the] == g_the  # GOLD's byte-identical matching
    back_t, back_s = vocab_intersection(bl, tok)
    assert dict(zip(back_t.tolist(), back_s.tolist(), strict=True))[g_the] == the
    assert int(compute_mined_map(tok, bl)[the]) == g_the  # MinED: distance 0
    assert int(compute_mined_map(bl, tok)[g_the]) == the
    mask = space_mask(tok)
    assert bool(mask[the]) and bool(space_mask(bl)[g_the])
    vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)
    for piece, i in vocab.items():
        if piece.startswith("▁") and not token_view(tok).is_special[i]:
            assert bool(mask[i]), piece
    if name == "gemma_bpe":
        runs = [r for r in _WS_RUNS if r in vocab]
        g_vocab = bl.backend_tokenizer.get_vocab()
        mined = compute_mined_map(tok, bl)
        for run in runs:
            assert bool(mask[vocab[run]]), run
            g_run = "Ġ" * len(run)
            if g_run in g_vocab:
                assert pairs[vocab[run]] == g_vocab[g_run]
                assert int(mined[vocab[run]]) == g_vocab[g_run]


# ---- real tokenizer files (read-only sanity check) ----------------------------------------


@pytest.fixture(scope="module")
def real() -> dict:
    if not all((SHARED / n / "tokenizer.json").is_file() for n in REAL):
        pytest.skip(f"real tokenizer files not found in {SHARED} (they sit beside the repository)")
    return {n: Tokenizer.from_file(str(SHARED / n / "tokenizer.json")) for n in REAL}


@pytest.mark.parametrize("name", NAMES)
def test_against_real_tokenizers(toks, real, name):
    for real_name, other in real.items():
        for a, b in ((toks[name], other), (other, toks[name])):
            result = check_pair(a, b, n=40, seed=5)
            assert result["mismatches"] == 0, (real_name, result["examples"])


def test_byte_level_normalizer_is_read_like_a_byte_level_pre_tokenizer(toks):
    """'Ġ' written by a ByteLevel NORMALIZER (no ByteLevel pre-tokenizer) spells a space too."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.ByteLevel()
    tok.decoder = decoders.ByteLevel()
    alphabet = pre.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    info = token_view(tok).info
    assert info.family == "byte_level" and info.lossless and not info.dummy_prefix
    g_the = tok.token_to_id("Ġthe")
    assert g_the is not None and token_bytes(tok)[g_the] == b" the"
    for other in (tok, toks["prepend_bpe"], toks["gemma_bpe"]):
        assert check_pair(tok, other, n=100, seed=9)["mismatches"] == 0
        for text in TRICKY[:12]:
            pair = align_texts(tok, other, text)
            al = align_ids(tok, other, pair.teacher_ids, pair.student_ids)
            assert torch.equal(al.teacher_chunk, pair.alignment.teacher_chunk), text


@pytest.mark.parametrize("name", NAMES)
def test_held_out_bits_per_byte_count_every_target_byte(toks, name):
    """eval.metrics.target_bytes: with the first word as masked context, the target tokens
    spell the rest of the text byte for byte, its first space included (decoding them, as
    before, let a `Strip` decoder eat that space)."""
    from anydistill.eval.metrics import target_bytes

    tok = toks[name]
    checked = 0
    for text in ["x the  cat \u2603 sat", "word  two spaces", "a\tb c", *TRICKY]:
        if "▁" in text or "<" in text:  # a literal marker; special tokens spell no bytes
            continue
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if len(ids) < 2:
            continue
        # only where the first token is exactly the first word (a lone dummy-prefix piece
        # has offsets that say nothing about where the targets start)
        first = token_view(tok).token_bytes[ids[0]] or b""
        if not first.strip() or first.strip() != text[: offsets[0][1]].strip().encode():
            continue
        example = {"input_ids": ids, "loss_mask": [False] + [True] * (len(ids) - 1)}
        assert target_bytes([example], tok) == len(text[offsets[0][1] :].encode()), text
        checked += 1
    assert checked >= 1

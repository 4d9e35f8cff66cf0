"""Cross-tokenizer alignment on five tokenizer families trained here on a tiny corpus.

Property tests (hypothesis) over random unicode text: chunks partition both sequences in
order, cover the same bytes on both sides, each side's tokens spell those bytes, and one
tokenizer against itself gives one-to-one chunks.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from anydistill.align import (
    align_chat,
    align_ids,
    align_texts,
    check_pair,
    random_texts,
    token_bytes,
    token_view,
    verify,
)
from anydistill.errors import DataError, ModelError

CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog. Don't panic!",
    "Привет мир, 你好世界, こんにちは, 안녕하세요, مرحبا, नमस्ते 12345 67890",
    "naïve café résumé Straße ﬁne ½ 😀 👍🏽 \t tabs\n\nnewlines  double  spaces",
]


def _corpus() -> list[str]:
    """Lines shuffled from the words above: a small alphabet, so unseen characters occur."""
    rng = random.Random(0)
    words = " ".join(CORPUS_EXTRA).split(" ")
    lines = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(300)]
    return CORPUS_EXTRA * 20 + lines


def _byte_level(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|bos|>", "<|eot|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))]
    )
    return tok


def _metaspace_byte_fallback(corpus: list[str]) -> Tokenizer:
    """SentencePiece-style BPE: '▁' prefix and spaces, `<0xNN>` tokens for unseen bytes."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=350, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return Tokenizer.from_str(json.dumps(spec))


def _unigram(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def _wordpiece(corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"], show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def _pure_bytes() -> Tokenizer:
    """Every character spelled as its UTF-8 bytes (`<0xNN>`), nothing learned."""
    spec = {
        "version": "1.0",
        "added_tokens": [
            {
                "id": 256,
                "content": "<eos>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE",
            "byte_fallback": True,
            "vocab": {f"<0x{b:02X}>": b for b in range(256)},
            "merges": [],
        },
    }
    return Tokenizer.from_str(json.dumps(spec))


def train_tokenizers() -> dict[str, Tokenizer]:
    """The five families, trained in well under a second each."""
    corpus = _corpus()
    return {
        "byte_level": _byte_level(corpus),
        "metaspace": _metaspace_byte_fallback(corpus),
        "unigram": _unigram(corpus),
        "wordpiece": _wordpiece(corpus),
        "bytes": _pure_bytes(),
    }


class _Toks(dict):
    def __repr__(self) -> str:  # hypothesis prints its arguments on failure
        return "<five trained tokenizers>"


@pytest.fixture(scope="session")
def toks() -> dict[str, Tokenizer]:
    return _Toks(train_tokenizers())


NAMES = ["byte_level", "metaspace", "unigram", "wordpiece", "bytes"]
PAIRS = list(itertools.product(NAMES, NAMES))

_PIECES = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "\r\n",
    "\u3000",
    "\xa0",
    "the",
    "Hello",
    "don't",
    "12345",
    "007",
    "你好",
    "世界",
    "Привет",
    "한국어",
    "مرحبا",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🇫🇷",
    "e\u0301",
    "o\u0308\u0323",
    "\u200b",
    "ﬁ",
    "½",
    "㎏",
    "Ǆ",
    "ß",
    "İ",
    "...",
    "[UNK]x",
]
texts = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.lists(
        st.one_of(st.sampled_from(_PIECES), st.text(st.characters(codec="utf-8"), max_size=3)),
        max_size=16,
    ).map("".join),
)


@pytest.mark.parametrize("teacher,student", PAIRS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_chunk_invariants_hold_on_random_text(toks, teacher, student, text):
    pair = align_texts(toks[teacher], toks[student], text)
    assert verify(pair, toks[teacher], toks[student]) == []
    al = pair.alignment
    assert al.teacher_chunk.dtype == torch.long and al.student_chunk.dtype == torch.long
    assert al.teacher_chunk.shape == pair.teacher_ids.shape
    assert al.student_chunk.shape == pair.student_ids.shape
    for chunks in (al.teacher_chunk, al.student_chunk):
        kept = chunks[chunks >= 0]
        if al.n_chunks:
            assert kept[0] == 0 and kept[-1] == al.n_chunks - 1
            assert set(torch.diff(kept).tolist()) <= {0, 1}
    if al.n_chunks:
        spans = al.chunk_spans()
        assert spans[0, 0] == 0 and spans[-1, 1] == len(text.encode())
    if teacher == student:
        assert bool(al.one_to_one_mask().all())


def test_check_pair_counts_no_mismatch_on_every_pair(toks):
    for teacher, student in PAIRS:
        result = check_pair(toks[teacher], toks[student], n=40, seed=7)
        assert result["mismatches"] == 0, (teacher, student, result["examples"])
        assert result["pairs_checked"] == 40 and result["tokens_per_s"] > 0


def test_families_are_detected(toks):
    got = {name: token_view(tok).info for name, tok in toks.items()}
    assert got["byte_level"].family == "byte_level" and got["byte_level"].lossless
    assert got["metaspace"].family == "metaspace" and got["metaspace"].byte_fallback
    assert got["metaspace"].dummy_prefix and got["metaspace"].lossless
    assert got["unigram"].model == "Unigram" and not got["unigram"].lossless
    assert got["wordpiece"].family == "wordpiece" and not got["wordpiece"].lossless
    assert got["bytes"].family == "bytes" and got["bytes"].lossless


def test_token_bytes_spell_the_text_for_lossless_families(toks):
    for name in ("byte_level", "metaspace", "bytes"):
        table = token_bytes(toks[name])
        for text in random_texts(50, seed=3):
            ids = toks[name].encode(text, add_special_tokens=False).ids
            spelled = b"".join(table[i] for i in ids)
            if name == "metaspace":  # dummy prefix; a literal '▁' reads as a space
                spelled = spelled.removeprefix(b" ")
                text = text.replace("▁", " ")
            assert spelled == text.encode(), (name, text)


def test_token_bytes_render_markers_and_specials(toks):
    bl = toks["byte_level"]
    table = token_bytes(bl)
    assert table[bl.token_to_id("<|bos|>")] is None
    assert table[bl.token_to_id("Ġ")] == b" "
    ms = token_bytes(toks["metaspace"])
    assert ms[toks["metaspace"].token_to_id("<0xE4>")] == b"\xe4"
    assert ms[toks["metaspace"].token_to_id("▁")] == b" "
    wp = toks["wordpiece"]
    cont = next(t for t in wp.get_vocab() if t.startswith("##") and len(t) > 2)
    assert token_bytes(wp)[wp.token_to_id(cont)] == cont[2:].encode()
    assert token_bytes(wp)[wp.token_to_id("[UNK]")] is None


def test_byte_fallback_splits_one_character_byte_by_byte(toks):
    pair = align_texts(toks["bytes"], toks["byte_level"], "a😀")
    spans = pair.teacher_spans.tolist()
    assert spans == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]


def test_special_tokens_are_masked(toks):
    pair = align_texts(toks["wordpiece"], toks["byte_level"], "hello world", True)
    t, s = pair.alignment.teacher_chunk, pair.alignment.student_chunk
    assert t[0] == -1 and t[-1] == -1 and s[0] == -1  # [CLS] ... [SEP] vs <|bos|>
    assert (t[1:-1] >= 0).all() and (s[1:] >= 0).all()
    assert verify(pair, toks["wordpiece"], toks["byte_level"], add_special_tokens=True) == []


def test_whitespace_only_text_masks_the_side_with_tokens(toks):
    pair = align_texts(toks["wordpiece"], toks["byte_level"], "   \n ")
    assert len(pair.teacher_ids) == 0 and pair.alignment.n_chunks == 0
    assert (pair.alignment.student_chunk == -1).all()
    empty = align_texts(toks["byte_level"], toks["metaspace"], "")
    assert empty.alignment.n_chunks == 0


def test_helpers_and_identical_copies(toks):
    copy = Tokenizer.from_str(toks["unigram"].to_str())
    pair = align_texts(toks["unigram"], copy, "naïve café 你好 ½ e\u0301 😀  x")
    al = pair.alignment
    assert bool(al.one_to_one_mask().all())
    t_count, s_count = al.counts()
    assert t_count.sum() == len(pair.teacher_ids) and s_count.shape == (al.n_chunks,)
    assert al.chunk_spans().shape == (al.n_chunks, 2)
    mixed = align_texts(toks["bytes"], toks["byte_level"], "the cat").alignment
    assert mixed.one_to_one_mask().sum() < mixed.n_chunks  # bytes vs merged tokens


def test_align_ids_matches_align_texts(toks):
    lossless = ["byte_level", "metaspace", "bytes"]
    for a, b in itertools.product(lossless, lossless):
        for text in random_texts(30, seed=11):
            pair = align_texts(toks[a], toks[b], text)
            al = align_ids(toks[a], toks[b], pair.teacher_ids, pair.student_ids.tolist())
            assert torch.equal(al.teacher_chunk, pair.alignment.teacher_chunk), (a, b, text)
            assert torch.equal(al.student_chunk, pair.alignment.student_chunk), (a, b, text)
            assert torch.equal(al.chunk_bounds, pair.alignment.chunk_bounds)


def test_align_ids_refuses_what_it_cannot_do(toks):
    bl, ms = toks["byte_level"], toks["metaspace"]
    with pytest.raises(ModelError, match="align_texts"):
        align_ids(toks["wordpiece"], bl, [5], [5])
    with pytest.raises(DataError, match="different bytes"):
        align_ids(bl, ms, bl.encode("hello").ids, ms.encode("help").ids)
    with pytest.raises(DataError, match="vocabulary"):
        align_ids(bl, ms, [10**6], [3])


# ---- chat ---------------------------------------------------------------------------------

TEMPLATE_A = (
    "{{ '<|bos|>' }}{% for m in messages %}{{ '<|bos|>' + m['role'] + '\n' + m['content'] "
    "+ '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|bos|>assistant\n' }}"
    "{% endif %}"
)
TEMPLATE_B = (  # trims contents; nothing after the last message
    "{% for m in messages %}{{ '<s>[' + m['role'] + '] ' + m['content'] | trim }}"
    "{% if not loop.last %}{{ '</s>' }}{% endif %}{% endfor %}"
)


def _chat_tokenizer(tok: Tokenizer, template: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template)


def test_chat_aligns_contents_and_maps_template_by_role(toks):
    a = _chat_tokenizer(toks["byte_level"], TEMPLATE_A)
    b = _chat_tokenizer(toks["metaspace"], TEMPLATE_B)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Wie geht's? 你好 😀\n"},
        {"role": "assistant", "content": "Gut, danke!"},
    ]
    chat = align_chat(a, b, messages, add_generation_prompt=True)
    al = chat.alignment
    stream = "".join(m["content"].strip() for m in messages).encode()
    tv, sv = token_view(a), token_view(b)
    assert al.n_chunks == len(chat.chunk_message) == len(chat.chunk_is_content)
    for side, ids, chunks, view in (
        ("teacher", chat.teacher_ids, al.teacher_chunk, tv),
        ("student", chat.student_ids, al.student_chunk, sv),
    ):
        kept = chunks[chunks >= 0]
        assert kept[0] == 0 and set(torch.diff(kept).tolist()) <= {0, 1}, side
        for k in range(al.n_chunks):
            members = ids[chunks == k].tolist()
            assert members, (side, k)
            if not chat.chunk_is_content[k]:
                continue
            lo, hi = al.chunk_spans()[k].tolist()
            spelled = b"".join(view.token_bytes[i] for i in members)
            assert spelled.removeprefix(b" ") == stream[lo:hi].removeprefix(b" "), (side, k)
    template = (~chat.chunk_is_content).nonzero().flatten().tolist()
    assert [chat.chunk_message[k].item() for k in template] == [0, 1, 2]
    # Template B has nothing after the last message, so A's trailing tokens are masked.
    assert (al.teacher_chunk[-3:] == -1).all()
    assert (al.student_chunk >= 0).all()
    assert chat.chunk_message[chat.chunk_is_content].unique().tolist() == [0, 1, 2]


def test_chat_refuses_templates_that_rewrite_content(toks):
    a = _chat_tokenizer(toks["byte_level"], TEMPLATE_A)
    upper = _chat_tokenizer(
        toks["metaspace"], "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    )
    with pytest.raises(DataError, match="changes message text"):
        align_chat(a, upper, [{"role": "user", "content": "hello"}])
    with pytest.raises(DataError, match="string 'content'"):
        align_chat(a, a, [{"role": "user", "content": None}])
    with pytest.raises(ModelError, match="chat template support"):
        align_chat(toks["byte_level"], a, [{"role": "user", "content": "x"}])

"""Alignment invariants on real tokenizer files (gpt2, llama3, olmo2, phi3, t5, bert).

The files live in ../shared/tokenizers next to the repository (see its README.md); a fresh
clone has none, and these tests skip.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from anydistill.align import align_chat, align_ids, align_texts, check_pair, token_view, verify

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers"
NAMES = ["gpt2", "llama3", "olmo2", "phi3", "t5", "bert"]
PAIRS = list(itertools.product(NAMES, NAMES))
LOSSLESS = ["gpt2", "llama3", "olmo2", "phi3"]

pytestmark = pytest.mark.skipif(
    not all((SHARED / n / "tokenizer.json").is_file() for n in NAMES),
    reason=f"real tokenizer files not found in {SHARED} (they sit beside the repository)",
)

TRICKY = [
    "",
    " ",
    "   ",
    "\n",
    "Hello world",
    " Hello  world ",
    "  leading and trailing  \n",
    "\t\ttabs\tand\r\nCRLF\r\n",
    "1234567890 3.14159 1,000,000 007",
    "naïve café résumé Straße ÆØÅ İstanbul",
    "e\u0301 o\u0308\u0323 a\u030a\u0301 stacked marks",
    "ﬁ ﬂ ½ ² ㎏ Ⅻ ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "你好世界，这是中文。日本語のテキスト、カタカナ",
    "한국어 텍스트 안녕하세요",
    "مرحبا بالعالم שלום עולם",
    "नमस्ते दुनिया สวัสดีชาวโลก",
    "😀 👍🏽 👨\u200d👩\u200d👧\u200d👦 🇫🇷🇩🇪 ❤️ 🏳️\u200d🌈",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "\x00\x01\x1f control \x7f chars",
    "replacement \ufffd char",
    "▁ literal metaspace ▁▁ and Ġ literal",
    "<|endoftext|> inline special <|endoftext|>",
    "</s> <s> <unk> [UNK] [CLS] <extra_id_0> <pad>",
    "don't I'm we'll they've HE'S",
    "   \n\n\n   \t  ",
    "x" * 300,
    "a" + " " * 50 + "b",
    "def f(x):\n    return x ** 2  # comment\n",
    "URL https://example.com/a?b=c&d=e#f email a.b@c.de",
]


def _load(loader: str) -> dict:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out = {}
    for name in NAMES:
        if loader == "auto":  # transformers may rebuild it (phi3: Metaspace, no Prepend)
            tok = AutoTokenizer.from_pretrained(SHARED / name)
        else:
            tok = Tokenizer.from_file(str(SHARED / name / "tokenizer.json"))
        token_view(tok)  # render the vocabulary once
        out[name] = tok
    return out


_CACHE: dict[str, dict] = {}


def _tokenizers(loader: str) -> dict:
    if loader not in _CACHE:
        _CACHE[loader] = _load(loader)
    return _CACHE[loader]


@pytest.fixture(scope="module")
def real() -> dict:
    return _tokenizers("auto")


@pytest.mark.parametrize("loader", ["auto", "file"])
@pytest.mark.parametrize("teacher,student", PAIRS)
def test_invariants_on_tricky_and_random_text(loader, teacher, student):
    toks = _tokenizers(loader)
    t, s = toks[teacher], toks[student]
    for text in TRICKY:
        pair = align_texts(t, s, text)
        assert verify(pair, t, s) == [], (text, verify(pair, t, s))
        if teacher == student:
            assert bool(pair.alignment.one_to_one_mask().all()), text
    result = check_pair(t, s, n=200, seed=2024)
    assert result["mismatches"] == 0, result["examples"]


def test_add_special_tokens_are_masked(real):
    pair = align_texts(real["bert"], real["llama3"], "Héllo wörld", add_special_tokens=True)
    al = pair.alignment
    assert al.teacher_chunk[0] == -1 and al.teacher_chunk[-1] == -1  # [CLS], [SEP]
    assert al.student_chunk[0] == -1  # <|begin_of_text|>
    assert verify(pair, real["bert"], real["llama3"], add_special_tokens=True) == []


def test_bert_chunks_cover_the_original_text(real):
    text = "Héllo Wörld, ﬁne!"
    pair = align_texts(real["bert"], real["gpt2"], text)
    data = text.encode()
    pieces = [data[a:b].decode() for a, b in pair.alignment.chunk_spans().tolist()]
    assert "".join(pieces) == text
    assert pieces[:2] == ["Héllo", " Wörld"]  # bert spells 'hello', 'world'


def test_byte_fallback_and_byte_level_split_an_emoji_bytewise(real):
    pair = align_texts(real["phi3"], real["gpt2"], "a😀")
    al = pair.alignment
    phi3_spans = pair.teacher_spans.tolist()
    assert [b - a for a, b in phi3_spans][-4:] == [1, 1, 1, 1]  # <0xF0><0x9F><0x98><0x80>
    assert al.chunk_spans()[-1].tolist() == [4, 5]  # gpt2 'ðŁĺ' + 'Ģ' cut at byte 4
    assert al.n_chunks == 3


def test_align_ids_agrees_with_align_texts(real):
    for a, b in itertools.product(LOSSLESS, LOSSLESS):
        for text in TRICKY[:20]:
            pair = align_texts(real[a], real[b], text)
            al = align_ids(real[a], real[b], pair.teacher_ids, pair.student_ids)
            assert torch.equal(al.teacher_chunk, pair.alignment.teacher_chunk), (a, b, text)
            assert torch.equal(al.student_chunk, pair.alignment.student_chunk), (a, b, text)


def test_chat_templates_of_llama3_and_phi3(real):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  Hi 你好😀\n"},
        {"role": "assistant", "content": "Hello there!"},
    ]
    chat = align_chat(real["llama3"], real["phi3"], messages, add_generation_prompt=True)
    al = chat.alignment
    stream = "".join(m["content"].strip() for m in messages).encode()
    for ids, chunks, tok in (
        (chat.teacher_ids, al.teacher_chunk, real["llama3"]),
        (chat.student_ids, al.student_chunk, real["phi3"]),
    ):
        view = token_view(tok)
        for k in torch.nonzero(chat.chunk_is_content).flatten().tolist():
            lo, hi = al.chunk_spans()[k].tolist()
            spelled = b"".join(view.token_bytes[i] for i in ids[chunks == k].tolist())
            assert spelled.lstrip(b" ") == stream[lo:hi].lstrip(b" "), k
    template = torch.nonzero(~chat.chunk_is_content).flatten().tolist()
    assert [chat.chunk_message[k].item() for k in template] == [0, 1, 2, 2]
    assert (al.teacher_chunk >= 0).all() and (al.student_chunk >= 0).all()

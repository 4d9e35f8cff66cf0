"""The demo's byte-level BPE tokenizer: round trip, specials, chat template, save/load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from anydistill.data.synthetic import arithmetic_problems, corpus_text
from anydistill.models.tokenizer_training import (
    ASSISTANT_TOKEN,
    SPECIAL_TOKENS,
    USER_TOKEN,
    tokenizer_fingerprint,
    train_tokenizer,
)

TEXTS = [r["text"] for r in arithmetic_problems(1500, seed=0)]
ODD_STRINGS = [
    "",
    " leading space",
    "trailing space ",
    "two  spaces\n\n\ttab and CRLF\r\n",
    "caf\u00e9 na\u00efve \u00fcber \u00f1and\u00fa",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "emoji \U0001f680\U0001f9ea and combining e\u0301",
    "\u0000 null and \x7f del",
    "Question: Tom has 7 apples.\nAnswer: 7 + 5 = 12. #### 12\n",
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_round_trip_exact(tok, text: str) -> None:
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_vocab_size_and_merges_learned(tok) -> None:
    assert len(tok) == 400
    # Frequent corpus words become single tokens, so text compresses well below 1 token/byte.
    text = TEXTS[0]
    assert len(tok(text)["input_ids"]) < len(text.encode()) / 2


def test_special_tokens(tok) -> None:
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    # A special token in text is one id, and nothing is added around plain text.
    assert tok("a<|eos|>")["input_ids"][-1] == 2
    assert 1 not in tok("hello")["input_ids"]
    assert tok.decode(tok("x<|user|>y")["input_ids"], skip_special_tokens=True) == "xy"


def test_chat_template(tok) -> None:
    messages = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "2 + 3 = 5. #### 5"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|user|>What is 2 + 3?<|assistant|>2 + 3 = 5. #### 5<|eos|>"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>What is 2 + 3?<|assistant|>"
    system = [{"role": "system", "content": "Be brief."}, *messages[:1]]
    assert tok.apply_chat_template(system, tokenize=False) == "Be brief.<|user|>What is 2 + 3?"
    # The {% generation %} block marks exactly the assistant's tokens (and its <|eos|>).
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    start = ids.index(tok.convert_tokens_to_ids(ASSISTANT_TOKEN)) + 1
    assert mask == [0] * start + [1] * (len(ids) - start)
    assert ids[-1] == tok.eos_token_id
    assert ids[0] == tok.convert_tokens_to_ids(USER_TOKEN)


def test_chat_template_rejects_unknown_role(tok) -> None:
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)


def test_save_and_load_offline(tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(tok)
    for text in ODD_STRINGS:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    messages = [{"role": "user", "content": "hi"}]
    assert loaded.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_deterministic_training(tok) -> None:
    again = train_tokenizer(TEXTS, vocab_size=400)
    assert again.get_vocab() == tok.get_vocab()
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)


def test_deterministic_across_processes(tok) -> None:
    # Rust hash maps are seeded per process; the vocab must not depend on that.
    code = (
        "from anydistill.data.synthetic import arithmetic_problems as a;"
        "from anydistill.models.tokenizer_training import train_tokenizer as t,"
        " tokenizer_fingerprint as f;"
        "print(f(t([r['text'] for r in a(1500, seed=0)], vocab_size=400)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tokenizer_fingerprint(tok)


def test_fingerprint_is_sensitive(tok) -> None:
    base = tokenizer_fingerprint(tok)
    assert len(base) == 64 and int(base, 16) >= 0
    assert tokenizer_fingerprint(train_tokenizer(TEXTS, vocab_size=401)) != base
    # A string repeated often enough to earn merges of its own must change the vocabulary.
    assert tokenizer_fingerprint(train_tokenizer(TEXTS + ["zzqq zzqq"] * 300, 400)) != base
    extended = train_tokenizer(TEXTS, vocab_size=400)
    extended.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})
    assert tokenizer_fingerprint(extended) != base


def test_training_on_a_megabyte() -> None:
    text = corpus_text(arithmetic_problems(6500, seed=9))
    assert len(text) > 1_000_000
    big = train_tokenizer([text[i : i + 4096] for i in range(0, len(text), 4096)], 1024)
    # The demo corpus runs out of repeated pairs before 1024, so the vocab may stop short.
    assert 512 < len(big) <= 1024


def test_vocab_size_too_small() -> None:
    with pytest.raises(ValueError, match="vocab_size must be at least 261"):
        train_tokenizer(["abc"], vocab_size=100)

"""Cross-tokenizer data: records aligned once, windows cut at chunk boundaries, collation."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from anydistill.align.token_bytes import token_view
from anydistill.config import DataConfig
from anydistill.data.align_stage import align_data, concat, record_example, windows
from anydistill.data.aligned import collate_cross
from anydistill.data.synthetic import arithmetic_problems
from anydistill.errors import DataError
from anydistill.models.tokenizer_training import train_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TEXTS = [r["text"] for r in arithmetic_problems(300, seed=3)] + [
    "naïve café — 你好 🙂 e\u0301",
    "  spaces   and\ttabs\n\nnew paragraphs  ",
]


@pytest.fixture(scope="module")
def toks():
    return train_tokenizer(TEXTS, vocab_size=480), train_tokenizer(TEXTS, vocab_size=300)


def _spelled(view, ids: np.ndarray) -> bytes:
    return b"".join(view.token_bytes[i] or b"" for i in ids)


def assert_chunks_agree(ex, teacher_tok, student_tok) -> None:
    """Every chunk has tokens on both sides, spells the same bytes, and has that length."""
    tv, sv = token_view(teacher_tok), token_view(student_tok)
    for chunk in (ex.teacher_chunk, ex.student_chunk):
        kept = chunk[chunk >= 0]
        assert np.all(np.diff(kept) >= 0)
        assert set(kept.tolist()) == set(range(ex.n_chunks))
    for k in range(ex.n_chunks):
        t = _spelled(tv, ex.teacher_ids[ex.teacher_chunk == k])
        s = _spelled(sv, ex.student_ids[ex.student_chunk == k])
        assert t == s
        assert len(t) == ex.chunk_bytes[k]


def test_text_record_is_aligned_with_bos_masked_and_eos_paired(toks):
    t, s = toks
    cfg = DataConfig(path="x")
    ex = record_example({"text": TEXTS[-2]}, t, s, "text", cfg)
    assert_chunks_agree(ex, t, s)
    assert ex.teacher_ids[0] == t.bos_token_id and ex.teacher_chunk[0] == -1
    assert ex.teacher_ids[-1] == t.eos_token_id and ex.student_ids[-1] == s.eos_token_id
    assert ex.teacher_chunk[-1] == ex.student_chunk[-1] == ex.n_chunks - 1
    assert ex.chunk_bytes[-1] == 0  # eos <-> eos spells no bytes
    assert ex.chunk_bytes.sum() == len(TEXTS[-2].encode())
    assert ex.student_target.tolist() == (ex.student_chunk >= 0).tolist()


def test_prompt_is_context_only(toks):
    t, s = toks
    cfg = DataConfig(path="x")
    prompt, completion = "Question: 12 + 30 = ?", " Answer: 42"
    ex = record_example(
        {"prompt": prompt, "completion": completion}, t, s, "prompt_completion", cfg
    )
    assert_chunks_agree(ex, t, s)
    assert ex.chunk_bytes.sum() == len(completion.encode())
    n_prompt = len(s(prompt, add_special_tokens=False)["input_ids"])
    assert not ex.student_target[: 1 + n_prompt].any()  # bos + prompt
    assert ex.student_target[1 + n_prompt :].all()  # completion + eos


def test_chat_targets_are_assistant_contents_and_their_end_of_turn(toks):
    t, s = toks
    cfg = DataConfig(path="x")
    msgs = [
        {"role": "user", "content": "what is 2 + 2?"},
        {"role": "assistant", "content": "it is 4"},
        {"role": "user", "content": "and 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    ex = record_example({"messages": msgs}, t, s, "messages", cfg)
    assert_chunks_agree(ex, t, s)
    assert ex.chunk_bytes.sum() == len(b"it is 4") + len(b"6")
    eos = np.flatnonzero(ex.student_ids == s.eos_token_id)
    assert len(eos) == 2 and (ex.student_chunk[eos] >= 0).all()  # end of turn is trained
    user = s("what is", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ex.student_ids)) if ex.student_ids[i] == user[0])
    assert ex.student_chunk[start] == -1


@pytest.mark.parametrize("seq_len", [8, 17, 64])
def test_windows_cut_at_chunk_boundaries_and_lose_nothing(toks, seq_len):
    t, s = toks
    cfg = DataConfig(path="x")
    full = concat([record_example({"text": x}, t, s, "text", cfg) for x in TEXTS[:40]])
    parts = windows(full, seq_len)
    assert all(len(p.teacher_ids) <= seq_len and len(p.student_ids) <= seq_len for p in parts)
    assert np.array_equal(np.concatenate([p.teacher_ids for p in parts]), full.teacher_ids)
    assert np.array_equal(np.concatenate([p.student_ids for p in parts]), full.student_ids)
    for p in parts:
        assert_chunks_agree(p, t, s)
    kept = sum(p.n_chunks for p in parts)
    assert kept >= full.n_chunks - len(parts)  # at most one chunk cut through per window
    if seq_len >= 17:  # windows this wide always reach a chunk boundary: nothing is lost
        assert kept == full.n_chunks


def test_cross_data_packs_text_and_collates_rows(toks):
    t, s = toks
    ds = datasets.Dataset.from_list([{"text": x} for x in TEXTS])
    cfg = DataConfig(path="x", seq_len=48)
    data = align_data(ds, ds.select(range(5)), t, s, cfg)
    assert data.mode == "text" and data.dropped == 0 and data.eval
    total = sum(len(x.encode()) for x in TEXTS)
    assert sum(int(e.chunk_bytes.sum()) for e in data.train) == total  # packing keeps it all
    batch = collate_cross(data.train[:4], len(t), len(s))
    assert batch.student_ids.shape[0] == 4 and batch.student_ids.shape[1] <= 48
    assert batch.student_targets.shape == batch.student_ce.shape
    assert batch.student_ce.sum() > 0
    for side in ("teacher", "student"):
        targets, chunk = getattr(batch, f"{side}_targets"), getattr(batch, f"{side}_chunk")
        assert (targets[chunk >= 0] >= 0).all()  # every chunked row predicts a real token
    assert len(batch.chunk_bytes) == batch.n_chunks
    # first tokens are never predicted: their chunks are gone from the rows
    ids = batch.student_ids[batch.student_attention]
    assert torch.equal(batch.student_targets[batch.student_ce], ids[1:][batch.student_ce[:-1]])


def test_unpacked_examples_keep_their_first_window(toks):
    t, s = toks
    ds = datasets.Dataset.from_list([{"text": x} for x in TEXTS[:20]])
    data = align_data(ds, ds.select([]), t, s, DataConfig(path="x", seq_len=12, packing=False))
    assert len(data.train) + data.dropped == 20
    assert all(len(e.teacher_ids) <= 12 and len(e.student_ids) <= 12 for e in data.train)


def test_no_usable_chunk_is_one_clear_error(toks):
    t, s = toks
    ds = datasets.Dataset.from_list([{"prompt": "a long prompt " * 10, "completion": "x"}] * 3)
    cfg = DataConfig(path="x", seq_len=8, packing=False)
    with pytest.raises(DataError, match="data.seq_len"):
        align_data(ds, ds.select([]), t, s, cfg)


@pytest.mark.skipif(
    not (SHARED / "tokenizers" / "llama3" / "tokenizer_config.json").is_file(),
    reason=f"real tokenizer files not found in {SHARED / 'tokenizers'}",
)
@pytest.mark.parametrize("teacher,student", [("llama3", "phi3"), ("phi3", "t5"), ("gpt2", "bert")])
def test_real_tokenizers_chat_and_text(teacher, student):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / teacher))
    s = AutoTokenizer.from_pretrained(str(SHARED / "tokenizers" / student))
    cfg = DataConfig(path="x", seq_len=32)
    text = "Héllo wörld! 1234 你好 🙂\n  indented line"
    ex = record_example({"text": text}, t, s, "text", cfg)
    assert ex.n_chunks > 3
    for part in windows(ex, 8):
        assert len(part.teacher_ids) <= 8 and len(part.student_ids) <= 8
    if t.chat_template and s.chat_template:
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]
        chat = record_example({"messages": msgs}, t, s, "messages", cfg)
        assert chat.chunk_bytes.sum() == len(text.encode())

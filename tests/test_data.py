"""Loading, tokenization masks, packing and collation in `anydistill.data`."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from anydistill.config import DataConfig
from anydistill.data import (
    Example,
    collate,
    detect_mode,
    load_raw,
    load_records,
    pack,
    texts_for_tokenizer,
    tokenize_data,
    tokenize_example,
    truncate_or_drop,
)
from anydistill.errors import DataError

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def make_tokenizer(chat_template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE (exact round trip, no unknown tokens) trained on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the cat sat on the mat", "what is two plus two? four", "hello there, how are you"]
    tok.train_from_iterator(corpus * 5, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def masked_runs(ex: Example, tok) -> list[str]:
    """Decode each contiguous run of target tokens."""
    runs, cur = [], []
    for i, m in zip(ex["input_ids"], ex["loss_mask"], strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"text": f"the cat sat on mat {i}"} for i in range(6)]


# ---------------------------------------------------------------- loading


def test_load_jsonl_json_parquet(tmp_path):
    ds = load_records(write_jsonl(tmp_path / "a.jsonl", ROWS))
    assert ds.column_names == ["text"] and len(ds) == 6 and ds[2]["text"] == ROWS[2]["text"]
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    assert len(load_records(str(tmp_path / "b.json"))) == 6
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "c.parquet"))
    ds = load_records(str(tmp_path / "c.parquet"), max_examples=4)
    assert len(ds) == 4 and ds[3]["text"] == ROWS[3]["text"]


def test_load_text_splits_on_blank_lines(tmp_path):
    (tmp_path / "t.txt").write_text("first doc\nline two\n\n\nsecond doc\n\nthird\n")
    ds = load_records(str(tmp_path / "t.txt"))
    assert ds["text"][:] == ["first doc\nline two", "second doc", "third"]
    (tmp_path / "notes").write_text("a\n\nb")
    assert len(load_records(str(tmp_path / "notes"), format="text")) == 2


def test_load_saved_dirs(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS), test=datasets.Dataset.from_list(ROWS[:2])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_records(str(tmp_path / "dd"), split="test")) == 2
    with pytest.raises(DataError, match=r"data\.path.*no split 'dev'.*\['test', 'train'\]"):
        load_records(str(tmp_path / "dd"), split="dev")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert len(load_records(str(tmp_path / "one"))) == 6
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "1.jsonl", ROWS[:3])
    write_jsonl(files / "2.jsonl", ROWS[3:])
    assert load_records(str(files))["text"][:] == [r["text"] for r in ROWS]


def test_load_errors_name_the_field(tmp_path):
    with pytest.raises(DataError, match=r"^data\.eval_path: .*missing\.jsonl does not exist"):
        load_records(str(tmp_path / "missing.jsonl"), field="data.eval_path")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"^data\.path: .*empty\.jsonl is empty"):
        load_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2 is not valid JSON"):
        load_records(str(tmp_path / "bad.jsonl"))
    (tmp_path / "list.jsonl").write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"line 2 is not a JSON object"):
        load_records(str(tmp_path / "list.jsonl"))


# ---------------------------------------------------------------- modes


def test_detect_mode():
    assert detect_mode(["messages", "prompt", "completion"]) == "messages"
    assert detect_mode(["prompt", "completion", "text"]) == "prompt_completion"
    assert detect_mode(["text", "id"]) == "text"
    assert detect_mode(["body"], "auto", text_column="body") == "text"
    with pytest.raises(DataError, match=r"found columns \['id', 'body'\].*data\.text_column"):
        detect_mode(["id", "body"])
    with pytest.raises(DataError, match=r"\['completion'\] are missing.*data\.completion_column"):
        detect_mode(["prompt", "text"], "prompt_completion")


# ---------------------------------------------------------------- masks


def test_text_mode_bos_eos_all_targets(tok):
    ex = tokenize_example({"text": "the cat sat"}, tok, "text")
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"][-1] == tok.eos_token_id
    assert all(ex["loss_mask"]) and tok.decode(ex["input_ids"][1:-1]) == "the cat sat"


def test_prompt_completion_strings_mask_completion_and_eos(tok):
    rec = {"prompt": "what is two plus two?", "completion": " four"}
    ex = tokenize_example(rec, tok, "prompt_completion")
    assert masked_runs(ex, tok) == [" four<eos>"]
    assert tok.decode(ex["input_ids"]) == "<bos>what is two plus two? four<eos>"


def test_conversational_prompt_completion(tok):
    rec = {
        "prompt": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is two plus two?"},
        ],
        "completion": [{"role": "assistant", "content": "four"}],
    }
    ex = tokenize_example(rec, tok, "prompt_completion")
    assert masked_runs(ex, tok) == ["four<|end|>\n"]
    assert tok.decode(ex["input_ids"]).startswith("<bos><|system|>\nbe brief<|end|>")


def test_messages_only_assistant_turns(tok):
    msgs = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "how are you"},
        {"role": "user", "content": "the cat sat?"},
        {"role": "assistant", "content": "on the mat, four"},
    ]
    ex = tokenize_example({"messages": msgs}, tok, "messages")
    assert masked_runs(ex, tok) == ["how are you<|end|>\n", "on the mat, four<|end|>\n"]
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(msgs, tokenize=False)


class SlowProxy:
    """A tokenizer without offsets, like the Python (slow) tokenizers."""

    is_fast = False

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_messages_without_offsets_match_fast_path(tok):
    msgs = [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "how are you"},
    ]
    fast = tokenize_example({"messages": msgs}, tok, "messages")
    slow = tokenize_example({"messages": msgs}, SlowProxy(tok), "messages")
    assert masked_runs(slow, tok) == masked_runs(fast, tok) == ["how are you<|end|>\n"]


def test_messages_need_chat_template():
    plain = make_tokenizer(chat_template=None)
    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    with pytest.raises(DataError, match=r"^data: the `messages` column needs a .*chat template"):
        tokenize_example(rec, plain, "messages")


# ---------------------------------------------------------------- packing, collate


def ex(ids: list[int], mask: list[bool] | None = None) -> Example:
    return Example(input_ids=ids, loss_mask=mask if mask is not None else [True] * len(ids))


def test_pack_blocks_and_tail():
    docs = [ex(list(range(k * 10, k * 10 + n))) for k, n in enumerate([3, 7, 5, 4])]  # 19 tokens
    blocks = pack(docs, 4)
    assert [len(b["input_ids"]) for b in blocks] == [4, 4, 4, 4]
    flat = [t for d in docs for t in d["input_ids"]]
    assert [t for b in blocks for t in b["input_ids"]] == flat[:16]  # only the tail is lost
    short = pack([ex([1, 2, 3])], 8)
    assert len(short) == 1 and short[0]["input_ids"] == [1, 2, 3]
    assert pack([], 8) == []


def test_truncate_or_drop():
    keep = ex([1, 2, 3, 4, 5], [False, False, True, True, True])
    drop = ex([1, 2, 3, 4, 5], [False, False, False, False, True])
    none = ex([1, 2], [False, False])
    kept, dropped = truncate_or_drop([keep, drop, none], 3)
    assert dropped == 2 and kept == [ex([1, 2, 3], [False, False, True])]


def test_collate_right_pads():
    batch = collate([ex([5, 6, 7], [False, True, True]), ex([8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[False, True, True], [True, False, False]]
    assert batch["input_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.bool


# ---------------------------------------------------------------- build glue


def test_load_raw_holdout_is_seeded_and_disjoint(tmp_path):
    rows = [{"prompt": f"what is {i}?", "completion": f" {i}"} for i in range(40)]
    cfg = DataConfig(path=write_jsonl(tmp_path / "pc.jsonl", rows), eval_fraction=0.25)
    torch.manual_seed(1)
    train, ev = load_raw(cfg, seed=3)
    torch.manual_seed(2)  # the split must not depend on the global RNG
    train2, ev2 = load_raw(cfg, seed=3)
    assert ev["prompt"][:] == ev2["prompt"][:] and len(ev) == 10 and len(train) == 30
    assert not set(train["prompt"][:]) & set(ev["prompt"][:])
    assert load_raw(cfg, seed=4)[1]["prompt"][:] != ev["prompt"][:]


def test_load_raw_eval_path_and_split(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS), dev=datasets.Dataset.from_list(ROWS[:2])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    train, ev = load_raw(DataConfig(path=str(tmp_path / "dd"), eval_split="dev"), seed=0)
    assert (len(train), len(ev)) == (6, 2)
    cfg = DataConfig(path=str(tmp_path / "dd"), eval_path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"^data\.eval_path: "):
        load_raw(cfg, seed=0)


def test_tokenize_data_text_packs(tmp_path, tok):
    rows = [{"text": "the cat sat on the mat " * (i % 3 + 1)} for i in range(50)]
    cfg = DataConfig(path=write_jsonl(tmp_path / "t.jsonl", rows), seq_len=16, eval_fraction=0.1)
    train_ds, eval_ds = load_raw(cfg, seed=0)
    data = tokenize_data(train_ds, eval_ds, tok, cfg)
    assert data.mode == "text" and data.dropped == 0
    assert all(len(b["input_ids"]) == 16 for b in data.train) and data.eval
    assert "the cat sat" in list(texts_for_tokenizer(train_ds, "auto", cfg))[0]


def test_tokenize_data_truncates_drops_and_errors(tmp_path, tok):
    rows = [
        {"prompt": "hello there, how are you? what is two plus two?", "completion": " four"},
        {"prompt": "hello there, " * 20, "completion": " four"},  # completion cut off: dropped
    ]
    cfg = DataConfig(path=write_jsonl(tmp_path / "pc.jsonl", rows), seq_len=24, eval_fraction=0)
    train_ds, eval_ds = load_raw(cfg, seed=0)
    data = tokenize_data(train_ds, eval_ds, tok, cfg)
    assert data.mode == "prompt_completion" and data.dropped == 1 and len(data.train) == 1
    assert data.eval == []
    tight = DataConfig(path=cfg.path, seq_len=12, eval_fraction=0)  # 1 bos + 14 prompt
    with pytest.raises(DataError, match=r"^data\.seq_len: none of the 2 training records"):
        tokenize_data(train_ds, eval_ds, tok, tight)
    bad = DataConfig(path=cfg.path, mode="messages")
    with pytest.raises(DataError, match=r"data\.messages_column"):
        tokenize_data(train_ds, eval_ds, tok, bad)


def test_tokenize_data_messages_column(tmp_path, tok):
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    cfg = DataConfig(
        path=write_jsonl(tmp_path / "m.jsonl", [{"chat": convo}] * 3),
        messages_column="chat",
        eval_fraction=0,
    )
    data = tokenize_data(*load_raw(cfg, seed=0), tok, cfg)
    assert data.mode == "messages" and len(data.train) == 3
    assert masked_runs(data.train[0], tok) == ["hello there<|end|>\n"]


def test_tokenize_data_many_records(tok):
    rows = [{"prompt": f"what is {i} plus two?", "completion": f" {i + 2}"} for i in range(10_000)]
    ds = datasets.Dataset.from_list(rows)
    cfg = DataConfig(path="unused.jsonl", seq_len=64)
    data = tokenize_data(ds, ds.select(range(10)), tok, cfg)
    assert len(data.train) == 10_000
    assert all(any(ex["loss_mask"]) for ex in data.train)


def test_synthetic_arithmetic(tok):
    pytest.importorskip("anydistill.data.synthetic")
    cfg = DataConfig(synthetic="arithmetic", synthetic_size=50, eval_fraction=0.1, seq_len=256)
    train, ev = load_raw(cfg, seed=0)
    assert (len(train), len(ev)) == (50, 10)
    assert not set(train["prompt"][:]) & set(ev["prompt"][:])
    data = tokenize_data(train, ev, tok, cfg)
    assert data.mode == "prompt_completion"
    assert masked_runs(data.train[0], tok) == [train[0]["completion"] + "<eos>"]

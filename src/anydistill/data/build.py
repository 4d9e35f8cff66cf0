"""From a `DataConfig` to tokenized train/eval examples: the glue the trainer calls."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from anydistill.config import DataConfig
from anydistill.data.loading import load_located
from anydistill.data.packing import pack, truncate_or_drop
from anydistill.data.records import Origin, Verdict, describe, sift_records, string_verdict
from anydistill.data.tokenize import (
    Example,
    detect_mode,
    tokenize_example,
    tokenize_pairs,
    tokenize_texts,
)
from anydistill.errors import DataError

_CHUNK = 1000  # records per batched tokenizer call: fast, and bounded memory


@dataclass
class TokenizedData:
    """Tokenized examples ready for `BatchStream` / `eval_batches`."""

    train: list[Example]
    eval: list[Example]
    mode: str
    dropped: int  # sequences (train + eval) dropped for having no target within seq_len


def load_raw(
    cfg: DataConfig, seed: int, prompts_only: bool = False
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) raw datasets, each checked record by record (`check_records`).

    `prompts_only`: the run generates every completion (sequence KD, on-policy), so records
    whose completion is empty are prompts, not holes.

    Synthetic arithmetic: `synthetic_size` training problems plus a disjoint eval set.
    Otherwise eval comes from `eval_path`, else `eval_split` of `path`, else a seeded
    `eval_fraction` hold-out of `path` (empty when the fraction is 0). `max_examples` caps
    what is read from each source.
    """
    if cfg.synthetic == "arithmetic":
        return _synthetic(cfg, seed)
    assert cfg.path is not None  # the config validator guarantees path or synthetic
    train, mode = _load_checked(cfg.path, cfg.split, cfg, "data.path", cfg.mode, prompts_only)
    if cfg.eval_path is not None:
        split = cfg.eval_split or cfg.split
        ev, _ = _load_checked(cfg.eval_path, split, cfg, "data.eval_path", mode, prompts_only)
        return train, ev
    if cfg.eval_split is not None:
        ev, _ = _load_checked(cfg.path, cfg.eval_split, cfg, "data.eval_split", mode, prompts_only)
        return train, ev
    return holdout_split(train, cfg.eval_fraction, seed)


def _load_checked(
    path: str, split: str, cfg: DataConfig, field: str, mode: str, prompts_only: bool = False
) -> tuple[datasets.Dataset, str]:
    """One source loaded, its mode resolved and its records checked before any tokenizing."""
    ds, origin = load_located(path, cfg.format, cfg.subset, split, cfg.max_examples, field)
    mode = detect_mode(ds.column_names, mode, **_columns(cfg), field=field)
    return check_records(ds, origin, mode, cfg, field, prompts_only), mode


def check_records(
    ds: datasets.Dataset,
    origin: Origin,
    mode: str,
    cfg: DataConfig,
    field: str,
    prompts_only: bool = False,
) -> datasets.Dataset:
    """Refuse a record whose text columns hold something other than text (naming file, line
    and column), and drop empty ones while they are few (see `sift_records`)."""
    names = {
        "text": [cfg.text_column],
        "prompt_completion": [cfg.prompt_column, cfg.completion_column],
        "messages": [cfg.messages_column],
    }[mode]
    return sift_records(ds, origin, names, lambda r: _verdict(r, mode, cfg, prompts_only), field)


def _verdict(
    record: dict[str, Any], mode: str, cfg: DataConfig, prompts_only: bool = False
) -> Verdict:
    if mode == "text":
        fix = f"store plain text in `{cfg.text_column}` or set data.text_column to such a column"
        return string_verdict(record[cfg.text_column], cfg.text_column, fix)
    if mode == "messages":
        return _messages_verdict(record[cfg.messages_column], cfg.messages_column)
    p_col, c_col = cfg.prompt_column, cfg.completion_column
    prompt, completion = record[p_col], record[c_col]
    if prompts_only and completion in (None, "", []):  # the completion will be generated
        if isinstance(prompt, list):
            return _messages_verdict(prompt, p_col)
        fix = f"store the prompt text in `{p_col}` or set data.prompt_column to such a column"
        return string_verdict(prompt, p_col, fix)
    if isinstance(prompt, list) and isinstance(completion, list):  # a chat prompt and reply
        return _messages_verdict(prompt, p_col, may_be_empty=True) or _messages_verdict(
            completion, c_col
        )
    fix = f"give `{p_col}` and `{c_col}` both as strings or both as lists of messages"
    if completion is None:
        return c_col, None
    if prompt is None:  # an empty prompt string is a prompt-less example; null is a hole
        return p_col, None
    if isinstance(prompt, list):
        return p_col, f"holds a list while `{c_col}` does not; {fix}"
    if not isinstance(prompt, str):
        return p_col, f"holds {describe(prompt)}, not a string; {fix}"
    return string_verdict(completion, c_col, fix)


def _messages_verdict(messages: Any, column: str, may_be_empty: bool = False) -> Verdict:
    if messages is None or (messages == [] and not may_be_empty):
        return column, None
    if not isinstance(messages, list):
        what = describe(messages)
    elif not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        what = "a list whose items are not all {role, content} objects"
    else:
        return None
    return column, f"holds {what}, not a list of messages; give a list of {{role, content}} objects"


def _synthetic(cfg: DataConfig, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    from anydistill.data.synthetic import split_problems  # demo code only loads when asked for

    n = cfg.synthetic_size
    if cfg.max_examples is not None:
        n = min(n, cfg.max_examples)
    n_eval = max(10, int(n * cfg.eval_fraction)) if cfg.eval_fraction > 0 else 64
    train, ev = split_problems(n, n_eval, seed)
    return datasets.Dataset.from_list(train), datasets.Dataset.from_list(ev)


def holdout_split(
    ds: datasets.Dataset, fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Seeded (train, eval) split that ignores the global RNG; both keep the original order."""
    n = len(ds)
    n_eval = min(max(1, int(n * fraction)), n - 1) if fraction > 0 and n > 1 else 0
    if n_eval == 0:
        return ds, ds.select([], keep_in_memory=True)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    eval_idx = sorted(perm[:n_eval])
    train_idx = sorted(perm[n_eval:])
    # keep_in_memory: never write index files into a user's saved dataset directory
    return ds.select(train_idx, keep_in_memory=True), ds.select(eval_idx, keep_in_memory=True)


def _columns(cfg: DataConfig) -> dict[str, str]:
    return {
        "text_column": cfg.text_column,
        "prompt_column": cfg.prompt_column,
        "completion_column": cfg.completion_column,
        "messages_column": cfg.messages_column,
    }


def texts_for_tokenizer(ds: datasets.Dataset, mode: str, cfg: DataConfig) -> Iterator[str]:
    """Raw strings of `ds` (texts, prompts and completions, or message contents) to train a
    tokenizer on."""
    mode = detect_mode(ds.column_names, mode, **_columns(cfg))
    names = {
        "text": [cfg.text_column],
        "prompt_completion": [cfg.prompt_column, cfg.completion_column],
        "messages": [cfg.messages_column],
    }[mode]
    for batch in ds.iter(batch_size=_CHUNK):
        for values in zip(*(batch[c] for c in names), strict=True):
            for value in values:
                yield from _strings(value)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):  # a conversation: its message contents
        for msg in value:
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                yield msg["content"]


def tokenize_dataset(
    ds: datasets.Dataset, tokenizer: Any, mode: str, cfg: DataConfig
) -> list[Example]:
    """Tokenize every record of `ds` in a resolved `mode`; string columns go in batches."""
    out: list[Example] = []
    cols = _columns(cfg)
    for batch in ds.iter(batch_size=_CHUNK):
        if mode == "text":
            out += tokenize_texts(batch[cfg.text_column], tokenizer, cfg.text_column)
            continue
        if mode == "prompt_completion":
            prompts, completions = batch[cfg.prompt_column], batch[cfg.completion_column]
            if all(isinstance(x, str) for x in prompts + completions):
                out += tokenize_pairs(
                    prompts, completions, tokenizer, (cfg.prompt_column, cfg.completion_column)
                )
                continue
        rows = [
            dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        out += [tokenize_example(r, tokenizer, mode, **cols) for r in rows]
    return out


def add_routes(
    examples: list[Example], ds: datasets.Dataset, column: str, names: list[str]
) -> None:
    """Set each example's `route`: the index in `names` of the teacher its record's `column`
    names (one example per record, before any is dropped)."""
    if column not in ds.column_names:
        raise DataError(
            f"route_by: the training data has no `{column}` column (found {ds.column_names}); "
            "add one naming each record's teacher or set route_by to such a column"
        )
    index = {name: i for i, name in enumerate(names)}
    values = ds[column]
    for n, (ex, value) in enumerate(zip(examples, values, strict=True)):
        if not isinstance(value, str) or value not in index:
            raise DataError(
                f"route_by: training record {n} has `{column}` {value!r}, which names no "
                f"teacher; give one of {', '.join(names)}"
            )
        ex["route"] = index[value]


def tokenize_data(
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    tokenizer: Any,
    cfg: DataConfig,
    routes: tuple[str, list[str]] | None = None,
) -> TokenizedData:
    """Detect the mode, tokenize both sets, then pack (text) or truncate/drop to `seq_len`.
    `routes` (column, teacher names): each training example gets the index of the teacher
    its record's column names (`route_by`)."""
    mode = detect_mode(train_ds.column_names, cfg.mode, **_columns(cfg))
    if len(eval_ds) > 0:
        detect_mode(eval_ds.column_names, mode, **_columns(cfg), field="data.eval_path")
    train = tokenize_dataset(train_ds, tokenizer, mode, cfg)
    ev = tokenize_dataset(eval_ds, tokenizer, mode, cfg) if len(eval_ds) > 0 else []
    if routes is not None:
        if cfg.packing and mode == "text":
            raise DataError(
                "route_by: packed text blocks join several records, each with its own teacher; "
                "set data.packing: false"
            )
        add_routes(train, train_ds, *routes)
    if cfg.packing and mode == "text":
        train, ev, dropped = pack(train, cfg.seq_len), pack(ev, cfg.seq_len), 0
    else:
        train, dropped_train = truncate_or_drop(train, cfg.seq_len)
        ev, dropped_eval = truncate_or_drop(ev, cfg.seq_len)
        dropped = dropped_train + dropped_eval
    for name, raw, got in (("training", train_ds, train), ("eval", eval_ds, ev)):
        if len(raw) > 0 and not got:
            raise DataError(
                f"data.seq_len: none of the {len(raw)} {name} records has a target token within "
                f"the first {cfg.seq_len} tokens; raise data.seq_len or check the {mode} columns"
            )
    return TokenizedData(train=train, eval=ev, mode=mode, dropped=dropped)

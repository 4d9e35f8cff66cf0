"""The prompts of a recipe's `data:` section, each with the record it came from.

A record gives a prompt through its prompt column (text, or chat messages) or its messages
column (the conversation up to its last assistant turn). The completion column is optional:
`generate` writes the completions. Each `PromptItem` keeps the whole record (its ``answer``,
``solution`` or ``tests`` verify the traces) and where it came from (file and line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anydistill.config import DataConfig
from anydistill.data.records import Verdict, describe, sift_records, string_verdict
from anydistill.errors import ConfigError, DataError
from anydistill.traces.endpoint import Prompt

__all__ = ["PromptItem", "load_prompts", "prompt_text", "with_system"]

_REFERENCES = ("answer", "solution", "test", "tests", "test_list")  # what verify_trace reads
_ROW = "__anydistill_row__"  # a column added while loading: which input record each one is


@dataclass(frozen=True)
class PromptItem:
    prompt: Prompt  # plain text, or chat messages ({"role", "content"})
    text: str  # what dedup and decontamination read (no system message)
    record: dict[str, Any]  # the input record, for verification
    source: str  # "file line N" or "source record index N"


def prompt_text(prompt: Prompt) -> str:
    """The prompt's own words: the text, or the non-system message contents joined."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m["content"]) for m in prompt if m.get("role") != "system")


def with_system(prompt: Prompt, system: str | None) -> Prompt:
    """The prompt as a chat that opens with `system` (kept when it already has one)."""
    if system is None:
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def _messages(value: Any) -> list[dict[str, Any]]:
    # Arrow adds None-valued keys when it unifies message schemas; templates would see them.
    return [{k: v for k, v in m.items() if v is not None} for m in value]


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value
    )


def _verdict(value: Any, column: str) -> Verdict:
    if isinstance(value, list):
        if not value:
            return column, None
        if _is_messages(value):
            return None
        return column, "holds a list whose items are not all {role, content} messages"
    return string_verdict(value, column, f"give `{column}` as text or a list of messages")


def _column(columns: list[str], cfg: DataConfig, field: str) -> tuple[str, str]:
    """(column, kind): the messages column, else the prompt column (train's order)."""
    mode = cfg.mode
    if mode == "text":
        raise ConfigError(
            "data.mode: `anydistill generate` needs prompts, but data.mode is text; give "
            "prompt or messages data (data.mode: auto)"
        )
    if mode in ("auto", "messages") and cfg.messages_column in columns:
        return cfg.messages_column, "messages"
    if mode in ("auto", "prompt_completion") and cfg.prompt_column in columns:
        return cfg.prompt_column, "prompt"
    raise DataError(
        f"{field}: found columns {columns} but no `{cfg.messages_column}` or "
        f"`{cfg.prompt_column}` column to take prompts from; rename the column or set "
        "data.messages_column (or data.prompt_column)"
    )


def _with_reference(record: dict[str, Any], answer: Any) -> dict[str, Any]:
    """The record, given the dataset's own answer as its reference when it has none: a
    completion ending ``#### N`` (GSM8K) or holding a ``\\boxed`` answer verifies traces."""
    if any(record.get(k) not in (None, "", []) for k in _REFERENCES) or not isinstance(answer, str):
        return record
    if "####" in answer:
        return {**record, "answer": answer}
    if "\\boxed" in answer:
        return {**record, "solution": answer}
    return record


def _answer(record: dict[str, Any], column: str, kind: str, cfg: DataConfig) -> Any:
    """The dataset's own answer: the completion column, or the last assistant message."""
    if kind == "prompt":
        return record.get(cfg.completion_column)
    messages = record.get(column)
    if _is_messages(messages) and messages and messages[-1]["role"] == "assistant":
        return messages[-1]["content"]
    return None


def _prompt(value: Any, kind: str, column: str, where: str) -> Prompt:
    if kind == "prompt":
        return value if isinstance(value, str) else _messages(value)
    if not _is_messages(value):
        raise DataError(
            f"data.path: {where}, column `{column}` holds {describe(value)}, not messages"
        )
    messages = _messages(value)
    while messages and messages[-1]["role"] == "assistant":  # the dataset's own answer
        messages.pop()
    if not messages:
        raise DataError(
            f"data.path: {where}, column `{column}` holds only assistant messages; a prompt "
            "needs a user message"
        )
    return messages


def load_prompts(cfg: DataConfig, seed: int) -> list[PromptItem]:
    """Every prompt of the data section, in order (synthetic: the training problems)."""
    if cfg.synthetic is not None:
        from anydistill.data.build import load_raw

        train, _ = load_raw(cfg, seed, prompts_only=True)
        records = train.to_list()
        return [
            PromptItem(r["prompt"], r["prompt"], r, f"synthetic {cfg.synthetic} record index {i}")
            for i, r in enumerate(records)
        ]
    from anydistill.data.loading import load_located

    assert cfg.path is not None  # the config validator guarantees path or synthetic
    ds, origin = load_located(cfg.path, cfg.format, cfg.subset, cfg.split, cfg.max_examples)
    column, kind = _column(list(ds.column_names), cfg, "data.path")
    if _ROW in ds.column_names:
        ds = ds.remove_columns(_ROW)
    ds = ds.add_column(_ROW, list(range(len(ds))))
    ds = sift_records(ds, origin, [column], lambda r: _verdict(r[column], column), "data.path")
    items = []
    for record in ds.to_list():
        where = origin.where(record.pop(_ROW))
        prompt = _prompt(record[column], kind, column, where)
        record = _with_reference(record, _answer(record, column, kind, cfg))
        items.append(PromptItem(prompt, prompt_text(prompt), record, where))
    return items

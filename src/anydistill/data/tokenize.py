"""Turn raw records into `Example`s: token ids plus a mask of which tokens are targets.

`loss_mask[t]` is True iff token t is a training target (the trainer shifts, so position
t-1 predicts token t). Plain text: every token. Prompt/completion and chat: only the
completion / assistant tokens and the end-of-turn or eos token that closes them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, TypedDict

from anydistill.data.records import describe
from anydistill.errors import DataError

MODES = ("text", "prompt_completion", "messages")


class _Routed(TypedDict, total=False):
    route: int  # `route_by`: the index of the teacher that teaches this sample


class Example(_Routed):
    input_ids: list[int]
    loss_mask: list[bool]


def detect_mode(
    columns: Sequence[str],
    mode: str = "auto",
    text_column: str = "text",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    messages_column: str = "messages",
    field: str = "data.path",
) -> str:
    """Resolve `mode` ("auto" picks messages > prompt/completion > text by the columns present)."""
    cols = list(columns)
    needs = {
        "messages": ([messages_column], "data.messages_column"),
        "prompt_completion": (
            [prompt_column, completion_column],
            "data.prompt_column and data.completion_column",
        ),
        "text": ([text_column], "data.text_column"),
    }
    if mode == "auto":
        for name, (needed, _) in needs.items():
            if all(c in cols for c in needed):
                return name
        raise DataError(
            f"{field}: found columns {cols} but no `{messages_column}`, "
            f"`{prompt_column}`+`{completion_column}` or `{text_column}` column; rename the "
            "columns or set data.messages_column, data.prompt_column/data.completion_column "
            "or data.text_column"
        )
    if mode not in needs:
        raise DataError(f"data.mode: unknown mode {mode!r}; use auto, {', '.join(MODES)}")
    needed, keys = needs[mode]
    missing = [c for c in needed if c not in cols]
    if missing:
        raise DataError(
            f"{field}: data.mode is {mode} but column(s) {missing} are missing (found {cols}); "
            f"set {keys} to the right column names"
        )
    return mode


def _bos_eos(tokenizer: Any) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id
    # GPT-2 style tokenizers reuse eos as bos; the previous document's eos already separates.
    start = [bos] if bos is not None and bos != eos else []
    end = [eos] if eos is not None else []
    return start, end


def _require_text(texts: Sequence[Any], column: str) -> None:
    """`load_raw` has already refused or dropped null values and named the record; a None
    here is a deliberately empty part. Anything else that is not text would train on its
    Python repr, so it is refused rather than str()-ed."""
    for t in texts:
        if t is not None and not isinstance(t, str):
            raise DataError(
                f"data: column `{column}` holds {describe(t)}, not a string; store plain text "
                "in it or point the data.*_column keys at text columns"
            )


def _encode(tokenizer: Any, texts: Sequence[str | None], column: str) -> list[list[int]]:
    if not texts:
        return []
    _require_text(texts, column)
    clean = ["" if t is None else t for t in texts]
    return tokenizer(clean, add_special_tokens=False)["input_ids"]


def tokenize_texts(texts: list[str], tokenizer: Any, column: str = "text") -> list[Example]:
    """Plain text: [bos] + tokens + [eos], every token a target."""
    start, end = _bos_eos(tokenizer)
    out: list[Example] = []
    for ids in _encode(tokenizer, texts, column):
        full = start + ids + end
        out.append(Example(input_ids=full, loss_mask=[True] * len(full)))
    return out


def tokenize_pairs(
    prompts: list[str],
    completions: list[str],
    tokenizer: Any,
    columns: tuple[str, str] = ("prompt", "completion"),
) -> list[Example]:
    """String prompt/completion: [bos] + prompt + completion + [eos]; completion+eos targets."""
    start, end = _bos_eos(tokenizer)
    out: list[Example] = []
    _require_text(completions, columns[1])  # both columns before any tokenizing
    p_ids = _encode(tokenizer, prompts, columns[0])
    c_ids = _encode(tokenizer, completions, columns[1])
    for p, c in zip(p_ids, c_ids, strict=True):
        ids = start + p + c + end
        mask = [False] * (len(start) + len(p)) + [True] * (len(c) + len(end))
        out.append(Example(input_ids=ids, loss_mask=mask))
    return out


def tokenize_example(
    record: dict[str, Any],
    tokenizer: Any,
    mode: str,
    text_column: str = "text",
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    messages_column: str = "messages",
) -> Example:
    """Tokenize one record in a resolved `mode` (see `detect_mode`)."""
    if mode == "text":
        return tokenize_texts([record[text_column]], tokenizer, text_column)[0]
    if mode == "prompt_completion":
        prompt, completion = record[prompt_column], record[completion_column]
        if isinstance(prompt, list) and isinstance(completion, list):
            msgs = _clean(prompt, prompt_column) + _clean(completion, completion_column)
            return tokenize_chat(msgs, range(len(prompt), len(msgs)), tokenizer, prompt_column)
        if isinstance(prompt, list) or isinstance(completion, list):
            raise DataError(
                f"data: `{prompt_column}` and `{completion_column}` must both be strings or "
                "both be lists of {role, content} messages"
            )
        return tokenize_pairs(
            [prompt], [completion], tokenizer, (prompt_column, completion_column)
        )[0]
    if mode == "messages":
        msgs = _clean(record[messages_column], messages_column)
        targets = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        return tokenize_chat(msgs, targets, tokenizer, messages_column)
    raise DataError(f"data.mode: unknown mode {mode!r}; use auto, {', '.join(MODES)}")


def _clean(messages: Any, column: str) -> list[dict[str, Any]]:
    """Validate messages and drop None-valued keys that arrow adds when unifying schemas
    (templates test `is defined`, and a None `tool_calls` would be rendered)."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise DataError(f"data: column `{column}` must hold lists of {{role, content}} messages")
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def _render(tokenizer: Any, messages: list[dict], generation: bool, column: str) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )
    except Exception as err:  # jinja raises its own errors, e.g. on role order
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"data: the chat template rejected a `{column}` record ({first})") from None


def _target_spans(
    tokenizer: Any, messages: list[dict], targets: Sequence[int], full: str, column: str
) -> list[tuple[int, int]]:
    """Char spans of the target messages in `full`, found by rendering prefixes: the text of
    messages[:i] (+ generation prompt) and of messages[:i+1] bracket message i."""
    spans: list[tuple[int, int]] = []
    search_from = 0
    for i in targets:
        gen = messages[i]["role"] == "assistant"
        if i == 0:
            try:  # some templates cannot render an empty conversation
                before = tokenizer.apply_chat_template(
                    [], tokenize=False, add_generation_prompt=gen
                )
            except Exception:
                before = ""
        else:
            before = _render(tokenizer, messages[:i], gen, column)
        upto = _render(tokenizer, messages[: i + 1], False, column)
        if full.startswith(upto) and upto.startswith(before) and len(before) >= search_from:
            spans.append((len(before), len(upto)))
        else:
            # Not prefix-stable (e.g. templates that drop earlier reasoning): fall back to
            # locating the message text itself; the end-of-turn token is then not a target.
            content = messages[i]["content"]
            pos = full.find(content, search_from) if isinstance(content, str) else -1
            if pos < 0 or not content:
                raise DataError(
                    f"data: cannot locate message {i} of a `{column}` record in the rendered "
                    "chat template; check that the template renders message contents verbatim"
                )
            spans.append((pos, pos + len(content)))
        search_from = spans[-1][1]
    return spans


def tokenize_chat(
    messages: list[dict[str, Any]], targets: Sequence[int], tokenizer: Any, column: str
) -> Example:
    """Render `messages` with the chat template; tokens inside messages `targets` are targets."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"data: the `{column}` column needs a tokenizer with a chat template; use a "
            "tokenizer that has one (e.g. an instruct model's) or give string "
            "prompt/completion columns"
        )
    full = _render(tokenizer, messages, False, column)
    spans = _target_spans(tokenizer, messages, targets, full, column)
    if not getattr(tokenizer, "is_fast", False):
        return _encode_segments(tokenizer, full, spans)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    starts = [s for s, _ in spans]
    mask = []
    for a, _b in enc["offset_mapping"]:
        k = bisect_right(starts, a) - 1
        mask.append(k >= 0 and a < spans[k][1])  # a token is a target if it starts in a span
    return Example(input_ids=list(enc["input_ids"]), loss_mask=mask)


def _encode_segments(tokenizer: Any, full: str, spans: list[tuple[int, int]]) -> Example:
    """Slow tokenizers have no offsets: encode the pieces between span edges separately."""
    ids: list[int] = []
    mask: list[bool] = []
    pos = 0
    for s, e in [*spans, (len(full), len(full))]:
        for piece, flag in ((full[pos:s], False), (full[s:e], True)):
            if piece:
                got = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += got
                mask += [flag] * len(got)
        pos = e
    return Example(input_ids=ids, loss_mask=mask)

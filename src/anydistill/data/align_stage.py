"""Records -> aligned two-tokenizer examples (`CrossExample`) fitted to `data.seq_len`.

Each record is tokenized by the teacher's and the student's tokenizer and cut into chunks
that spell the same bytes (anydistill.align) once, when the data is prepared, so a training
step only pads and indexes. What a chunk covers follows the same-tokenizer data path:

- text: [bos] + text + [eos]; every text chunk is a target.
- prompt/completion strings: [bos] + prompt + completion + [eos]; the prompt is aligned on
  its own and masked, so no chunk straddles the boundary and none of it is a target.
- messages (or prompt/completion as message lists): each side renders its own chat template
  (`align_chat`); assistant message contents are targets, and so is the template run that
  follows each one (its end-of-turn marker).

bos and eos are special tokens with no bytes: bos is never predicted, and eos is paired with
the other side's eos as a chunk of zero bytes ("end here"), or masked when a side has none.
Chunk ids of masked text are -1. `student_target` marks what a `ce` term trains on: the
student tokens of target chunks, plus its eos.

Fitting to seq_len: an example longer than seq_len on either side is cut into windows at
chunk boundaries (both sides end together, each at most seq_len tokens); with `packing`
(text mode) examples are first laid end to end, so no text is lost. Without packing an
example keeps its first window, as truncation does on the same-tokenizer path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from anydistill.align.chunks import align_chat, align_texts
from anydistill.config import DataConfig
from anydistill.data.aligned import CrossExample
from anydistill.data.build import _columns
from anydistill.data.tokenize import _bos_eos, _clean, detect_mode
from anydistill.errors import DataError

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class AlignedData:
    """Aligned examples ready for `BatchStream` / `collate_cross`."""

    train: list[CrossExample]
    eval: list[CrossExample]
    mode: str
    dropped: int


def _piece(t_ids, s_ids, t_chunk, s_chunk, chunk_bytes, s_target) -> CrossExample:
    return CrossExample(
        teacher_ids=np.asarray(t_ids, dtype=np.int64),
        student_ids=np.asarray(s_ids, dtype=np.int64),
        teacher_chunk=np.asarray(t_chunk, dtype=np.int64),
        student_chunk=np.asarray(s_chunk, dtype=np.int64),
        chunk_bytes=np.asarray(chunk_bytes, dtype=np.int64),
        student_target=np.asarray(s_target, dtype=bool),
    )


def _text_piece(teacher_tok: Any, student_tok: Any, text: str, target: bool) -> CrossExample:
    pair = align_texts(teacher_tok, student_tok, text, add_special_tokens=False)
    al, bounds = pair.alignment, pair.alignment.chunk_bounds.numpy()
    t_chunk, s_chunk = al.teacher_chunk.numpy(), al.student_chunk.numpy()
    if not target:  # context only: no chunk, no target
        return _piece(
            pair.teacher_ids, pair.student_ids, np.full_like(t_chunk, -1),
            np.full_like(s_chunk, -1), _EMPTY, np.zeros(len(s_chunk), dtype=bool),
        )  # fmt: skip
    return _piece(
        pair.teacher_ids, pair.student_ids, t_chunk, s_chunk, bounds[1:] - bounds[:-1],
        s_chunk >= 0,
    )  # fmt: skip


def _special(t_ids: list[int], s_ids: list[int], chunk: bool, target: bool) -> CrossExample:
    """A run of special tokens with no bytes: one zero-byte chunk when both sides have one."""
    paired = chunk and bool(t_ids) and bool(s_ids)
    t_chunk = [0 if paired else -1] * len(t_ids)
    s_chunk = [0 if paired else -1] * len(s_ids)
    return _piece(t_ids, s_ids, t_chunk, s_chunk, [0] if paired else [], [target] * len(s_ids))


def concat(pieces: list[CrossExample]) -> CrossExample:
    """Lay examples end to end; chunk ids are shifted so they stay distinct."""
    chunks_t, chunks_s, base = [], [], 0
    for p in pieces:
        chunks_t.append(np.where(p.teacher_chunk >= 0, p.teacher_chunk + base, -1))
        chunks_s.append(np.where(p.student_chunk >= 0, p.student_chunk + base, -1))
        base += p.n_chunks

    def cat(arrays: list, dtype: type) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    return CrossExample(
        teacher_ids=cat([p.teacher_ids for p in pieces], np.int64),
        student_ids=cat([p.student_ids for p in pieces], np.int64),
        teacher_chunk=cat(chunks_t, np.int64),
        student_chunk=cat(chunks_s, np.int64),
        chunk_bytes=cat([p.chunk_bytes for p in pieces], np.int64),
        student_target=cat([p.student_target for p in pieces], bool),
    )


def _remap(chunk: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Chunk ids renumbered over the kept chunks; tokens of dropped chunks become -1."""
    new_id = np.cumsum(keep) - 1
    ok = chunk >= 0
    ok[ok] = keep[chunk[ok]]
    return np.where(ok, new_id[np.maximum(chunk, 0)], -1)


def _chat_example(teacher_tok: Any, student_tok: Any, messages: list[dict], targets: set[int]):
    chat = align_chat(teacher_tok, student_tok, messages)
    al = chat.alignment
    owner, content = chat.chunk_message.numpy(), chat.chunk_is_content.numpy()
    is_target = content & np.isin(owner, list(targets))
    follows = np.zeros_like(is_target)  # the template run right after a target message
    follows[1:] = ~content[1:] & is_target[:-1]
    keep = is_target | follows
    sizes = np.diff(al.chunk_bounds.numpy())  # template runs span no bytes
    t_chunk, s_chunk = (
        _remap(al.teacher_chunk.numpy(), keep),
        _remap(al.student_chunk.numpy(), keep),
    )
    sizes = sizes[keep]
    return _piece(chat.teacher_ids, chat.student_ids, t_chunk, s_chunk, sizes, s_chunk >= 0)


def record_example(
    record: dict[str, Any], teacher_tok: Any, student_tok: Any, mode: str, cfg: DataConfig
) -> CrossExample:
    """One record in a resolved `mode`, aligned (see the module doc)."""
    (t_bos, t_eos), (s_bos, s_eos) = _bos_eos(teacher_tok), _bos_eos(student_tok)
    start = _special(t_bos, s_bos, chunk=False, target=False)
    end = _special(t_eos, s_eos, chunk=True, target=True)
    if mode == "text":
        text = record[cfg.text_column]
        body = _text_piece(teacher_tok, student_tok, "" if text is None else str(text), True)
        return concat([start, body, end])
    if mode == "prompt_completion":
        prompt, completion = record[cfg.prompt_column], record[cfg.completion_column]
        if isinstance(prompt, list) and isinstance(completion, list):
            msgs = _clean(prompt, cfg.prompt_column) + _clean(completion, cfg.completion_column)
            targets = set(range(len(prompt), len(msgs)))
            return _chat_example(teacher_tok, student_tok, msgs, targets)
        if isinstance(prompt, list) or isinstance(completion, list):
            raise DataError(
                f"data: `{cfg.prompt_column}` and `{cfg.completion_column}` must both be "
                "strings or both be lists of {role, content} messages"
            )
        head = _text_piece(teacher_tok, student_tok, str(prompt or ""), False)
        body = _text_piece(teacher_tok, student_tok, str(completion or ""), True)
        return concat([start, head, body, end])
    msgs = _clean(record[cfg.messages_column], cfg.messages_column)
    targets = {i for i, m in enumerate(msgs) if m["role"] == "assistant"}
    return _chat_example(teacher_tok, student_tok, msgs, targets)


def _first_rows(chunk: np.ndarray, n: int) -> np.ndarray:
    """Index of each chunk's first token (chunk ids are non-decreasing where >= 0)."""
    idx = np.flatnonzero(chunk >= 0)
    first = np.full(n, len(chunk), dtype=np.int64)
    np.minimum.at(first, chunk[idx], idx)
    return first


def _slice(ex: CrossExample, t: slice, s: slice, counts: tuple) -> CrossExample:
    """Tokens t / s of `ex`; chunks not wholly inside both slices become -1."""
    t_chunk, s_chunk = ex.teacher_chunk[t], ex.student_chunk[s]
    n = ex.n_chunks
    inside = np.ones(n, dtype=bool)
    for chunk, total in ((t_chunk, counts[0]), (s_chunk, counts[1])):
        inside &= np.bincount(chunk[chunk >= 0], minlength=n) == total
    present = np.zeros(n, dtype=bool)
    present[t_chunk[t_chunk >= 0]] = True
    keep = inside & present
    return CrossExample(
        teacher_ids=ex.teacher_ids[t],
        student_ids=ex.student_ids[s],
        teacher_chunk=_remap(t_chunk, keep),
        student_chunk=_remap(s_chunk, keep),
        chunk_bytes=ex.chunk_bytes[keep],
        student_target=ex.student_target[s],
    )


def windows(ex: CrossExample, seq_len: int) -> list[CrossExample]:
    """Cut `ex` at chunk boundaries into pieces of at most `seq_len` tokens on each side.

    A single chunk longer than a window is cut through (that chunk is then dropped).
    """
    n_t, n_s, n = len(ex.teacher_ids), len(ex.student_ids), ex.n_chunks
    if n_t <= seq_len and n_s <= seq_len:
        return [ex]
    cut_t = np.append(_first_rows(ex.teacher_chunk, n)[1:], n_t)
    cut_s = np.append(_first_rows(ex.student_chunk, n)[1:], n_s)
    counts = (
        np.bincount(ex.teacher_chunk[ex.teacher_chunk >= 0], minlength=n),
        np.bincount(ex.student_chunk[ex.student_chunk >= 0], minlength=n),
    )
    out, a, b = [], 0, 0
    while a < n_t or b < n_s:
        j = min(
            np.searchsorted(cut_t, a + seq_len, side="right"),
            np.searchsorted(cut_s, b + seq_len, side="right"),
        )
        j -= 1
        if j >= 0 and (cut_t[j] > a or cut_s[j] > b):
            ta, sb = int(cut_t[j]), int(cut_s[j])
        else:
            ta, sb = min(a + seq_len, n_t), min(b + seq_len, n_s)
        out.append(_slice(ex, slice(a, ta), slice(b, sb), counts))
        a, b = ta, sb
    return out


def usable(ex: CrossExample) -> bool:
    """True when a chunk besides the ones holding either side's first token remains."""
    firsts = {int(c[0]) for c in (ex.teacher_chunk, ex.student_chunk) if len(c) and c[0] >= 0}
    return ex.n_chunks > len(firsts) and len(ex.teacher_ids) > 1 and len(ex.student_ids) > 1


def cross_examples(
    ds: datasets.Dataset,
    teacher_tok: Any,
    student_tok: Any,
    mode: str,
    cfg: DataConfig,
    progress: bool = False,
) -> tuple[list[CrossExample], int]:
    """(examples fitted to seq_len, number of records or windows dropped as unusable)."""
    from rich.progress import track

    rows = track(ds, description="aligning", total=len(ds), disable=not progress, transient=True)
    records = [record_example(r, teacher_tok, student_tok, mode, cfg) for r in rows]
    if cfg.packing and mode == "text" and records:
        pieces = windows(concat(records), cfg.seq_len)
    else:
        pieces = [windows(r, cfg.seq_len)[0] for r in records]
    kept = [p for p in pieces if usable(p)]
    return kept, len(pieces) - len(kept)


def align_data(
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    teacher_tok: Any,
    student_tok: Any,
    cfg: DataConfig,
    progress: bool = False,
) -> AlignedData:
    """Detect the mode and align both sets: the align stage, which `data.prepare` calls
    where one tokenizer would call `tokenize_data`; `progress` shows a bar while the
    training set is aligned."""
    mode = detect_mode(train_ds.column_names, cfg.mode, **_columns(cfg))
    if len(eval_ds) > 0:
        detect_mode(eval_ds.column_names, mode, **_columns(cfg), field="data.eval_path")
    train, dropped = cross_examples(train_ds, teacher_tok, student_tok, mode, cfg, progress)
    ev, dropped_eval = (
        cross_examples(eval_ds, teacher_tok, student_tok, mode, cfg) if len(eval_ds) else ([], 0)
    )
    for name, raw, got in (("training", train_ds, train), ("eval", eval_ds, ev)):
        if len(raw) > 0 and not got:
            raise DataError(
                f"data.seq_len: none of the {len(raw)} {name} records keeps an aligned target "
                f"chunk within {cfg.seq_len} tokens; raise data.seq_len or check the {mode} "
                "columns"
            )
    return AlignedData(train=train, eval=ev, mode=mode, dropped=dropped + dropped_eval)

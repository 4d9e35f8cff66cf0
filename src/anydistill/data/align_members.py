"""The align stage for several teachers on their own tokenizers (`teachers:` in a
cross-tokenizer run): records -> `MultiCrossExample`s fitted to `data.seq_len`.

Which teachers a record is aligned to: in a mixture, every member with a weight > 0 (a
weight-0 member is never run, so it needs no alignment, and weights [1, 0] give exactly the
lone first teacher's data); under `route_by`, only the record's own teacher. Members that read
one tokenizer share one alignment, made once.

Windows (`shared_windows`): a text longer than seq_len on any side is cut into windows once,
the same student windows for every teacher (the student runs once per micro-batch, and a
teacher mixture compares every teacher on the same student rows). Cuts go only where every
alignment has a chunk boundary, i.e. at a byte offset where the student and every teacher
start a token, at the furthest such place that leaves every side within seq_len. No chunk of
any teacher is then split by an edge, so each teacher scores every chunk it would score on
its own; the price is a window that may end a little earlier than one teacher alone would
need. Where no common boundary fits (a stretch of text longer than a window that the
tokenizers never cut at the same byte), the window is cut through: the student at seq_len,
each teacher at its own last boundary before that, and the chunks an edge splits are
dropped for that teacher, as a lone teacher drops a chunk longer than a window. A single
alignment is cut exactly as `align_stage.windows` cuts it. A window is kept when it leaves a
usable chunk for every teacher it is aligned to (no teacher runs on an empty side).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from anydistill.config import DataConfig
from anydistill.data.align_stage import (
    AlignedData,
    _first_rows,
    _slice,
    concat,
    cross_examples,
    record_example,
    usable,
    windows,
)
from anydistill.data.aligned import CrossExample
from anydistill.data.build import _columns, add_routes
from anydistill.data.members import MultiCrossExample
from anydistill.data.tokenize import detect_mode
from anydistill.errors import DataError
from anydistill.models.tokenizer import real_vocab_size


def _cuts(ex: CrossExample, n_s: int) -> np.ndarray:
    """Per student position p (0..n_s): the teacher position of a cut there that keeps every
    chunk whole (p starts a chunk on both sides), -1 where there is none; n_s maps to the end."""
    n, n_t = ex.n_chunks, len(ex.teacher_ids)
    first_t, first_s = _first_rows(ex.teacher_chunk, n), _first_rows(ex.student_chunk, n)
    both = (first_t < n_t) & (first_s < n_s)
    both[:1] = False  # before the first chunk is no cut
    at = np.full(n_s + 1, -1, dtype=np.int64)
    at[first_s[both]] = first_t[both]
    at[n_s] = n_t
    return at


def _counts(ex: CrossExample) -> tuple[np.ndarray, np.ndarray]:
    n = ex.n_chunks
    return (
        np.bincount(ex.teacher_chunk[ex.teacher_chunk >= 0], minlength=n),
        np.bincount(ex.student_chunk[ex.student_chunk >= 0], minlength=n),
    )


def shared_windows(exs: Sequence[CrossExample], seq_len: int) -> list[list[CrossExample]]:
    """Cut alignments of one student sequence (identical student ids) into the same student
    windows, each side at most `seq_len` tokens (see the module doc); per window, each
    alignment's piece in the order given."""
    if len(exs) == 1:
        return [[w] for w in windows(exs[0], seq_len)]
    n_s, n_t = len(exs[0].student_ids), [len(ex.teacher_ids) for ex in exs]
    if n_s <= seq_len and max(n_t) <= seq_len:
        return [list(exs)]
    maps = [_cuts(ex, n_s) for ex in exs]
    common = np.flatnonzero(np.all(np.stack(maps) >= 0, axis=0))
    counts = [_counts(ex) for ex in exs]
    out, b, a = [], 0, [0] * len(exs)
    while b < n_s or any(ak < nt for ak, nt in zip(a, n_t, strict=True)):
        lo, hi = np.searchsorted(common, [b, b + seq_len], side="right")
        hits = common[lo:hi]
        for at, ak in zip(maps, a, strict=True):
            hits = hits[(at[hits] >= ak) & (at[hits] - ak <= seq_len)]
        if len(hits):
            p = int(hits[-1])
            cut = [int(at[p]) for at in maps]
        else:
            p, cut = _cut_through(maps, b, a, n_s, n_t, seq_len)
        out.append(
            [
                _slice(ex, slice(ak, ck), slice(b, p), cn)
                for ex, ak, ck, cn in zip(exs, a, cut, counts, strict=True)
            ]
        )
        b, a = p, cut
    return out


def _cut_through(
    maps: list[np.ndarray], b: int, a: list[int], n_s: int, n_t: list[int], seq_len: int
) -> tuple[int, list[int]]:
    """No common boundary fits: the student cut at seq_len, each teacher at its own last
    boundary before it (or through its chunk when none fits)."""
    p = min(b + seq_len, n_s)
    cut = []
    for at, ak, nt in zip(maps, a, n_t, strict=True):
        own = np.flatnonzero(at[b + 1 : p + 1] >= 0) + b + 1
        own = own[(at[own] >= ak) & (at[own] - ak <= seq_len)]
        cut.append(int(at[own[-1]]) if len(own) else min(ak + seq_len, nt))
    return p, cut


def align_members(
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    teacher_tok: Any,
    student_tok: Any,
    member_toks: Sequence[Any],
    weights: Sequence[float],
    cfg: DataConfig,
    route: tuple[str, list[str]] | None = None,
    progress: bool = False,
) -> AlignedData:
    """Training records aligned to their teachers (see the module doc); `member_toks` per
    member (members reading one tokenizer pass the same object), `route` (column, member
    names) under `route_by`. The held-out records are aligned to the run's teacher tokenizer
    (`teacher_tok`, the first member's) alone, as a lone teacher's are: eval scores that one."""
    mode = detect_mode(train_ds.column_names, cfg.mode, **_columns(cfg))
    if len(eval_ds) > 0:
        detect_mode(eval_ds.column_names, mode, **_columns(cfg), field="data.eval_path")
    routes: list[int] | None = None
    if route is not None:
        if cfg.packing and mode == "text":
            raise DataError(
                "route_by: packed text blocks join several records, each with its own teacher; "
                "set data.packing: false"
            )
        holders: list[dict] = [{} for _ in range(len(train_ds))]
        add_routes(holders, train_ds, *route)  # type: ignore[arg-type]
        routes = [h["route"] for h in holders]
    train, dropped = _member_examples(
        train_ds, student_tok, list(member_toks), weights, routes, mode, cfg, progress
    )
    ev, dropped_eval = (
        cross_examples(eval_ds, teacher_tok, student_tok, mode, cfg) if len(eval_ds) else ([], 0)
    )
    for name, raw, got in (("training", train_ds, train), ("eval", eval_ds, ev)):
        if len(raw) > 0 and not got:
            raise DataError(
                f"data.seq_len: none of the {len(raw)} {name} records keeps an aligned target "
                f"chunk within {cfg.seq_len} tokens for every teacher; raise data.seq_len or "
                f"check the {mode} columns"
            )
    return AlignedData(train=train, eval=ev, mode=mode, dropped=dropped + dropped_eval)


def _member_examples(
    ds: datasets.Dataset,
    student_tok: Any,
    member_toks: list[Any],
    weights: Sequence[float],
    routes: list[int] | None,
    mode: str,
    cfg: DataConfig,
    progress: bool,
) -> tuple[list[MultiCrossExample], int]:
    from rich.progress import track

    vocabs = tuple(real_vocab_size(tok) for tok in member_toks)
    slot = {id(tok): i for i, tok in reversed(list(enumerate(member_toks)))}  # first holder
    rows = track(ds, description="aligning", total=len(ds), disable=not progress, transient=True)
    per_record = []  # (members taught, {slot: that tokenizer's alignment})
    for n, record in enumerate(rows):
        taught = [routes[n]] if routes is not None else [k for k, w in enumerate(weights) if w > 0]
        slots = dict.fromkeys(slot[id(member_toks[k])] for k in taught)
        aligned = {s: record_example(record, member_toks[s], student_tok, mode, cfg) for s in slots}
        per_record.append((taught, aligned))
    pieces: list[tuple[list[int], dict[int, CrossExample]]] = []
    if cfg.packing and mode == "text" and per_record and routes is None:
        taught, first = per_record[0]
        order = list(first)
        whole = [concat([al[s] for _, al in per_record]) for s in order]
        for window in shared_windows(whole, cfg.seq_len):
            pieces.append((taught, dict(zip(order, window, strict=True))))
    else:
        for taught, aligned in per_record:
            order = list(aligned)
            window = shared_windows([aligned[s] for s in order], cfg.seq_len)[0]
            pieces.append((taught, dict(zip(order, window, strict=True))))
    kept = []
    for taught, aligned in pieces:
        if not all(usable(al) for al in aligned.values()):
            continue
        first = next(iter(aligned.values()))
        if any(not np.array_equal(al.student_ids, first.student_ids) for al in aligned.values()):
            raise DataError(
                "data: the student's tokens of a record differ between its alignments to two "
                "teachers' tokenizers; check student.tokenizer"
            )
        alignments = tuple(
            aligned[slot[id(tok)]] if k in taught else None for k, tok in enumerate(member_toks)
        )
        route = taught[0] if routes is not None else None
        kept.append(
            MultiCrossExample(first.student_ids, first.student_target, alignments, vocabs, route)
        )
    return kept, len(pieces) - len(kept)

"""Vocabulary-level maps between a teacher and a student tokenizer, computed once per pair.

Tokens are compared by the bytes they spell (`anydistill.align.token_bytes`), so 'Ġthe'
(byte-level BPE) and '▁the' (SentencePiece) are the same token b" the". Special and unknown
tokens spell no text; they are compared by their vocabulary string instead.

- `vocab_intersection`: one-to-one pairs of ids spelling identical bytes (the matched part of
  the GOLD-style hybrid loss);
- `space_mask`: ids whose bytes start with ASCII whitespace (ALM's debiasing);
- `mined_map`: each teacher id -> the student id at minimum byte edit distance (the MinED
  baseline of Wan et al. 2024, "Knowledge Fusion of Large Language Models"), exact, cached.

The MinED search is exact (the brute-force answer, with ties to the smallest student id) but
never scores all V_t x V_s pairs: exact matches come from a dictionary, edit distance 1 from
a symmetric-deletion dictionary, and every remaining teacher token is searched in rounds of
a lower bound (length difference and byte-class multiset overlap, one matrix product per
block of teacher tokens) so that only pairs whose bound reaches the running best are scored,
by a vectorized bit-parallel edit distance (Myers 1999, "A fast bit-vector algorithm for
approximate string matching based on dynamic programming").
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anydistill.align.token_bytes import token_view

MINED_VERSION = "mined-v2"  # bump when the answer changes (v2: added tokens the model emits)
_WORD = 62  # longest pattern for the int64 bit-parallel distance (sum of two 62-bit words)
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


def _pieces(tok: Any) -> list[str]:
    view = token_view(tok)
    out = [""] * len(view.token_bytes)
    for piece, i in view.backend.get_vocab(with_added_tokens=True).items():
        if 0 <= i < len(out):
            out[i] = piece
    return out


def vocab_strings(tok: Any) -> tuple[list[bytes], list[bool], list[str]]:
    """(bytes per id, whether the id spells text, vocabulary string per id).

    Ids that spell no text (special, unknown, holes in the id range) get their vocabulary
    string's UTF-8 as bytes, so they can still be compared with each other.
    """
    view = token_view(tok)
    pieces = _pieces(tok)
    text = [b is not None for b in view.token_bytes]
    data = [b if b is not None else pieces[i].encode() for i, b in enumerate(view.token_bytes)]
    return data, text, pieces


def vocab_intersection(teacher: Any, student: Any) -> tuple[Tensor, Tensor]:
    """One-to-one (teacher ids, student ids) pairs that spell the same bytes.

    Text tokens pair by bytes, special tokens by vocabulary string. Where a byte string has
    several ids on a side (a byte-fallback '<0x20>' and '▁' both spell b" "), ids with the
    same vocabulary string pair first, the rest in increasing id order; one tokenizer against
    itself therefore gives the identity.
    """
    t_bytes, t_text, t_pieces = vocab_strings(teacher)
    s_bytes, s_text, s_pieces = vocab_strings(student)
    groups: dict[tuple[bool, bytes], list[int]] = defaultdict(list)
    for i, (b, is_text) in enumerate(zip(s_bytes, s_text, strict=True)):
        groups[(is_text, b)].append(i)
    t_out, s_out = [], []
    t_groups: dict[tuple[bool, bytes], list[int]] = defaultdict(list)
    for i, (b, is_text) in enumerate(zip(t_bytes, t_text, strict=True)):
        if (is_text, b) in groups:
            t_groups[(is_text, b)].append(i)
    for key, t_ids in t_groups.items():
        s_ids = groups[key]
        if len(t_ids) == 1 and len(s_ids) == 1:
            t_out.append(t_ids[0])
            s_out.append(s_ids[0])
            continue
        by_piece = {s_pieces[j]: j for j in reversed(s_ids)}
        used, rest = set(), []
        for i in t_ids:
            j = by_piece.get(t_pieces[i])
            if j is not None and j not in used:
                used.add(j)
                t_out.append(i)
                s_out.append(j)
            else:
                rest.append(i)
        free = [j for j in s_ids if j not in used]
        for i, j in zip(rest, free, strict=False):
            t_out.append(i)
            s_out.append(j)
    order = np.argsort(np.asarray(t_out, dtype=np.int64), kind="stable")
    t_arr = np.asarray(t_out, dtype=np.int64)[order]
    s_arr = np.asarray(s_out, dtype=np.int64)[order]
    return torch.from_numpy(t_arr), torch.from_numpy(s_arr)


def space_mask(tok: Any) -> Tensor:
    """Bool [V]: ids whose bytes start with ASCII whitespace (the next word begins here)."""
    view = token_view(tok)
    flags = [b is not None and len(b) > 0 and b[0] in _WHITESPACE for b in view.token_bytes]
    return torch.tensor(flags, dtype=torch.bool)


# ---- edit distance --------------------------------------------------------------------------


def _padded(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """[n, max_len] uint8 bytes (zero padded) and [n] int64 lengths."""
    lengths = np.fromiter((len(s) for s in strings), dtype=np.int64, count=len(strings))
    width = max(1, int(lengths.max()) if len(strings) else 1)
    buf = np.zeros((len(strings), width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(strings), dtype=np.uint8)
    rows = np.repeat(np.arange(len(strings)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    buf[rows, cols] = flat
    return buf, lengths


def _peq(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[n, 256] uint64: bit i of entry c is set where the pattern's byte i equals c."""
    n = len(data)
    width = min(data.shape[1], _WORD)
    out = np.zeros((n, 256), dtype=np.uint64)
    for i in range(width):
        rows = np.flatnonzero(lengths > i)
        out[rows, data[rows, i]] |= np.uint64(1 << i)
    return out


def _myers(
    peq: np.ndarray, pat: np.ndarray, m: np.ndarray, text: np.ndarray, n: np.ndarray
) -> np.ndarray:
    """Levenshtein distances of P pairs: pattern `pat[k]` of the bitmask table peq [U, 256]
    (lengths m, 1..62) against texts [P, width] of lengths n, sorted by n descending.

    Hyyro's formulation of Myers' bit-vector algorithm: one pass over the text with the
    pattern's column of the DP table packed into two bit vectors; pairs leave the active
    prefix as their text ends.
    """
    one = np.uint64(1)
    mask = (one << m.astype(np.uint64)) - one
    top = one << np.maximum(m - 1, 0).astype(np.uint64)
    pv, mv = mask.copy(), np.zeros_like(mask)
    score = m.astype(np.int64)
    flat = peq.reshape(-1)
    base = pat.astype(np.int64) * 256
    for j in range(text.shape[1]):
        k = int(np.searchsorted(-n, -j, side="left"))  # pairs with n > j
        if k == 0:
            break
        eq = flat[base[:k] + text[:k, j]]
        p, v = pv[:k], mv[:k]
        xv = eq | v
        xh = (((eq & p) + p) ^ p) | eq
        ph = v | ~(xh | p)
        mh = p & xh
        t = top[:k]
        score[:k] += (ph & t != 0).astype(np.int64) - (mh & t != 0)
        ph = (ph << one) | one
        mh <<= one
        pv[:k] = (mh | ~(xv | ph)) & mask[:k]
        mv[:k] = ph & xv & mask[:k]
    return score


def _python_distance(a: bytes, b: bytes) -> int:
    """Plain dynamic programming (only for pairs where both strings exceed 62 bytes)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


class _Side:
    """One vocabulary's byte strings as arrays."""

    def __init__(self, strings: list[bytes]) -> None:
        self.strings = strings
        self.data, self.lengths = _padded(strings)


def pair_distances(a: _Side, b: _Side, ai: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Edit distance between a.strings[ai[k]] and b.strings[bi[k]] for every k."""
    out = np.empty(len(ai), dtype=np.int64)
    la, lb = a.lengths[ai], b.lengths[bi]
    a_pat = la <= _WORD
    b_pat = ~a_pat & (lb <= _WORD)
    for pat_is_a, sel in ((True, a_pat), (False, b_pat)):
        idx = np.flatnonzero(sel)
        if len(idx) == 0:
            continue
        p_side, t_side = (a, b) if pat_is_a else (b, a)
        p_ids, t_ids = (ai[idx], bi[idx]) if pat_is_a else (bi[idx], ai[idx])
        n = t_side.lengths[t_ids]
        order = np.argsort(-n, kind="stable")
        idx, p_ids, t_ids, n = idx[order], p_ids[order], t_ids[order], n[order]
        m = p_side.lengths[p_ids]
        uniq, inv = np.unique(p_ids, return_inverse=True)
        table = _peq(p_side.data[uniq], p_side.lengths[uniq])
        width = max(1, int(n[0]))
        dist = _myers(table, inv.reshape(-1), m, t_side.data[t_ids, :width], n)
        out[idx] = np.where(m == 0, n, dist)
    for k in np.flatnonzero(~a_pat & ~b_pat).tolist():
        out[k] = _python_distance(a.strings[int(ai[k])], b.strings[int(bi[k])])
    return out


# ---- MinED search ---------------------------------------------------------------------------


def _byte_classes(strings: list[bytes], n_classes: int = 96) -> np.ndarray:
    """Byte -> class: the most frequent bytes get a class each, the rest share by hashing."""
    counts = np.bincount(np.frombuffer(b"".join(strings), dtype=np.uint8), minlength=256)
    order = np.argsort(-counts, kind="stable")
    classes = np.empty(256, dtype=np.int64)
    own = n_classes // 2
    classes[order[:own]] = np.arange(own)
    classes[order[own:]] = own + np.arange(256 - own) % (n_classes - own)
    return classes


def _features(side: _Side, classes: np.ndarray, n_classes: int) -> tuple[Tensor, Tensor]:
    """Per token: (class present, class count - 1) and (class present, class count >= 2).

    The product of a teacher's first and a student's second vector bounds the multiset
    overlap of their bytes from above: per class, min(a, b) <= [a>=1][b>=1] + (a-1)+[b>=2].
    """
    n = len(side.strings)
    cls = classes[side.data]
    valid = np.arange(side.data.shape[1]) < side.lengths[:, None]
    counts = np.zeros((n, n_classes), dtype=np.float32)
    np.add.at(counts, (np.repeat(np.arange(n), valid.sum(1)), cls[valid]), 1.0)
    present = (counts >= 1).astype(np.float32)
    first = np.concatenate([present, np.maximum(counts - 1, 0)], 1)
    second = np.concatenate([present, (counts >= 2).astype(np.float32)], 1)
    return torch.from_numpy(first), torch.from_numpy(second)


def _deletion_candidates(t_strings: list[bytes], s_strings: list[bytes], todo: list[int]):
    """Pairs (t, s) sharing a variant with at most one byte deleted: every pair at edit
    distance 1 is among them (the symmetric-deletion idea of SymSpell)."""
    index: dict[bytes, list[int]] = defaultdict(list)
    for j, s in enumerate(s_strings):
        index[s].append(j)
        for k in range(len(s)):
            bucket = index[s[:k] + s[k + 1 :]]
            if not bucket or bucket[-1] != j:
                bucket.append(j)
    ti: list[int] = []
    si: list[int] = []
    for i in todo:
        t = t_strings[i]
        found = set(index.get(t, ()))
        for k in range(len(t)):
            found.update(index.get(t[:k] + t[k + 1 :], ()))
        ti += [i] * len(found)
        si += found
    return np.asarray(ti, dtype=np.int64), np.asarray(si, dtype=np.int64)


def _search(t: _Side, s: _Side, todo: np.ndarray, best: np.ndarray, block: int = 512) -> None:
    """Exact search for teacher ids `todo`; `best` holds keys distance * V_s + student id.

    Candidates are scored in rounds of increasing lower bound; a teacher is done once its
    best distance is no larger than the bound of every candidate not yet scored.
    """
    n_s = len(s.strings)
    classes = _byte_classes(t.strings + s.strings)
    n_classes = int(classes.max()) + 1
    t_feat, _ = _features(t, classes, n_classes)
    _, s_feat = _features(s, classes, n_classes)
    s_feat_t = s_feat.T.contiguous()
    s_len = s.lengths.astype(np.int16)
    order = todo[np.argsort(t.lengths[todo], kind="stable")]  # similar lengths per block
    for start in range(0, len(order), block):
        rows = order[start : start + block]
        overlap = (t_feat[torch.from_numpy(rows)] @ s_feat_t).numpy().astype(np.int16)
        bound = np.maximum(t.lengths[rows, None].astype(np.int16), s_len[None, :])
        bound -= overlap
        del overlap
        local = best[rows].copy()
        level = bound.min(1).astype(np.int64)
        live = np.flatnonzero(local // n_s >= level)  # not yet proven optimal
        while len(live):
            ri, sj = np.nonzero(bound[live] == level[live, None])
            if len(ri):
                ti = live[ri]
                dist = pair_distances(t, s, rows[ti], sj)
                np.minimum.at(local, ti, dist * n_s + sj)
            # every candidate with bound <= level is scored: a best within it is final
            live = live[local[live] // n_s > level[live]]
            level[live] += 1
        best[rows] = local


def mined_from_strings(
    t_strings: list[bytes], t_pieces: list[str], s_strings: list[bytes], s_pieces: list[str]
) -> np.ndarray:
    """int64 [V_t]: for each teacher string, the student id at minimum edit distance.

    Ties go to a student id with the same vocabulary string (at distance 0), then to the
    smallest id: what scoring every pair would give, found without scoring them all.
    """
    n_s = len(s_strings)
    if n_s == 0:
        raise ValueError("the student vocabulary is empty")
    by_bytes: dict[bytes, int] = {}
    by_both: dict[tuple[bytes, str], int] = {}
    for j in range(n_s - 1, -1, -1):
        by_bytes[s_strings[j]] = j
        by_both[(s_strings[j], s_pieces[j])] = j
    out = np.full(len(t_strings), -1, dtype=np.int64)
    todo = []
    for i, b in enumerate(t_strings):
        j = by_both.get((b, t_pieces[i]), by_bytes.get(b))
        if j is None:
            todo.append(i)
        else:
            out[i] = j
    if todo:
        t, s = _Side(t_strings), _Side(s_strings)
        best = np.full(len(t_strings), np.iinfo(np.int64).max, dtype=np.int64)
        ti, si = _deletion_candidates(t_strings, s_strings, todo)
        if len(ti):
            np.minimum.at(best, ti, pair_distances(t, s, ti, si) * n_s + si)
        rest = np.asarray(todo, dtype=np.int64)
        rest = rest[best[rest] // n_s != 1]  # distance 1 is final: 0 was ruled out above
        if len(rest):
            _search(t, s, rest, best)
        done = np.asarray(todo, dtype=np.int64)
        out[done] = best[done] % n_s
    return out


def compute_mined_map(teacher: Any, student: Any) -> np.ndarray:
    """int64 [V_t]: the student id whose bytes are nearest in edit distance to each teacher id's
    (`mined_from_strings` on both tokenizers' `vocab_strings`)."""
    t_strings, _, t_pieces = vocab_strings(teacher)
    s_strings, _, s_pieces = vocab_strings(student)
    return mined_from_strings(t_strings, t_pieces, s_strings, s_pieces)


def _cache_root() -> Path:
    """ANYDISTILL_CACHE, else XDG_CACHE_HOME/anydistill, else ~/.cache/anydistill."""
    if os.environ.get("ANYDISTILL_CACHE"):
        return Path(os.environ["ANYDISTILL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "anydistill"


def _tok_key(tok: Any) -> str:
    """Vocabulary hash plus how its tokens render to bytes (the map depends on both)."""
    from anydistill.models.tokenizer import tokenizer_hash

    view = token_view(tok)
    h = hashlib.sha256(tokenizer_hash(view.backend).encode())
    h.update(repr(view.info).encode())
    h.update(repr(view.token_bytes).encode())  # what each id spells, whatever decided it
    return h.hexdigest()[:16]


def mined_cache_path(teacher: Any, student: Any, cache_dir: str | Path | None = None) -> Path:
    """Where the map of this tokenizer pair is cached."""
    root = Path(cache_dir) if cache_dir is not None else _cache_root() / "mined"
    return root / f"{MINED_VERSION}-{_tok_key(teacher)}-{_tok_key(student)}.npy"


def mined_map(
    teacher: Any, student: Any, cache_dir: str | Path | None = None, stats: dict | None = None
) -> Tensor:
    """Cached `compute_mined_map` as a LongTensor [V_t] (`stats` receives seconds and hit)."""
    path = mined_cache_path(teacher, student, cache_dir)
    t0 = time.perf_counter()
    if path.exists():
        arr = np.load(path)
        hit = True
    else:
        arr = compute_mined_map(teacher, student)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
        hit = False
    if stats is not None:
        stats.update(seconds=time.perf_counter() - t0, cache_hit=hit, path=str(path))
    return torch.from_numpy(arr)

"""Check alignments on random text and measure their speed.

`verify` states the invariants the losses rely on: chunks partition both sequences in order,
each chunk covers the same bytes on both sides, and each side's tokens spell those bytes
(tokenizers that rewrite the text are compared after their own normalizer, and chunks with an
unknown token are compared by offsets only).
"""

from __future__ import annotations

import random
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from anydistill.align.chunks import AlignedPair, align_encoded, char_to_byte
from anydistill.align.token_bytes import TokenView, token_view

_WORDS = ["the", "Hello", "naïve", "café", "don't", "I'm", "GPU", "x", "tokenizer", "ﬁne"]
_SCRIPTS = [
    "Привет мир",
    "Γειά σου",
    "你好世界",
    "日本語のテキスト",
    "한국어",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "สวัสดี",
    "Ünïcödé",
    "Straße",
]
_EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🤖", "✨"]
_MARKS = ["\u0301", "\u0308", "\u0323\u0302", "\u200d", "\u200b", "\ufe0f"]
_SPACES = [" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\u3000", "\xa0"]
_PUNCT = list(".,;:!?-()[]{}\"'/\\@#$%^&*+=<>|~`_") + ["...", "—", "«»", "½", "²", "㎏"]


def random_texts(n: int, seed: int = 0, max_pieces: int = 24) -> Iterator[str]:
    """`n` random strings mixing scripts, digits, whitespace runs, emoji and combining marks."""
    rng = random.Random(seed)
    kinds = ["word", "script", "digits", "space", "emoji", "mark", "punct", "char"]
    for _ in range(n):
        out = []
        for _ in range(rng.randint(0, max_pieces)):
            kind = rng.choice(kinds)
            if kind == "word":
                out.append(rng.choice(_WORDS))
            elif kind == "script":
                word = rng.choice(_SCRIPTS)
                a = rng.randrange(len(word))
                out.append(word[a : a + rng.randint(1, 6)])
            elif kind == "digits":
                out.append(str(rng.randrange(10 ** rng.randint(1, 9))))
            elif kind == "space":
                out.append(rng.choice(_SPACES))
            elif kind == "emoji":
                out.append(rng.choice(_EMOJI))
            elif kind == "mark":
                out.append(rng.choice("aeoun") + rng.choice(_MARKS))
            elif kind == "punct":
                out.append(rng.choice(_PUNCT))
            else:  # any non-surrogate code point
                c = rng.randrange(0x20, 0x30000)
                out.append(chr(c if not 0xD800 <= c < 0xE000 else c + 0x800))
        yield "".join(out)


def _mark_at(text: str, i: int) -> bool:
    return i < len(text) and unicodedata.category(text[i]).startswith("M")


def _squash(s: str) -> str:
    return "".join(s.split())


def _segment_starts(view: TokenView, ids: np.ndarray, keep: np.ndarray) -> set[int]:
    """Kept tokens that begin a text segment (where a dummy-prefix space may be added)."""
    starts = set()
    for k, i in enumerate(keep.tolist()):
        if k == 0 or int(ids[i - 1]) in view.splits:
            starts.add(i)
    return starts


def _shared_characters(view: TokenView, offsets: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Tokens of a lossless tokenizer whose characters a neighbour shares.

    Their bytes come from splitting the shared run by byte lengths, not from their offsets:
    a Unigram model with byte fallback gives every byte token of an unknown run of several
    characters that whole run's offsets. The chunk's bytes are still compared.
    """
    shared = np.zeros(len(offsets), dtype=bool)
    if not view.info.lossless or len(keep) < 2:
        return shared
    a, b = keep[:-1], keep[1:]
    full = offsets[:, 0] < offsets[:, 1]
    touch = (offsets[a, 1] > offsets[b, 0]) & full[a] & full[b]
    shared[a[touch]] = True
    shared[b[touch]] = True
    return shared


def _side_problems(
    name: str, view: TokenView, ids, chunk, spans, offsets, pair: AlignedPair
) -> list[str]:
    text, al = pair.text, pair.alignment
    data, bounds = text.encode("utf-8"), al.chunk_bounds.tolist()
    cum = char_to_byte(text)
    ids, chunk, spans = ids.numpy(), chunk.numpy(), spans.numpy()
    keep = np.flatnonzero(spans[:, 0] >= 0)
    n = al.n_chunks
    if n == 0:
        return []
    ids_k = chunk[keep]
    if len(ids_k) == 0 or ids_k[0] != 0 or ids_k[-1] != n - 1:
        return [f"{name}: chunk ids do not run from 0 to {n - 1}"]
    if np.any(np.diff(ids_k) < 0) or np.any(np.diff(ids_k) > 1) or np.any(ids_k < 0):
        return [f"{name}: chunk ids are not consecutive"]
    masked = np.flatnonzero(chunk < 0)
    special = view.is_special[ids[masked]] & (offsets[masked, 0] == offsets[masked, 1])
    if not special.all():
        return [f"{name}: token {masked[~special][0]} is not special but has no chunk"]
    ends = spans[keep]
    if ends[0, 0] != 0 or ends[-1, 1] != len(data) or np.any(ends[1:, 0] != ends[:-1, 1]):
        return [f"{name}: token spans do not tile the text"]
    problems, carry = [], None
    firsts = _segment_starts(view, ids, keep)
    shared = _shared_characters(view, offsets, keep)
    pieces: dict[int, list] = {}
    for i in keep.tolist():
        pieces.setdefault(int(chunk[i]), []).append(i)
    for k, members in pieces.items():
        lo, hi = bounds[k], bounds[k + 1]
        if spans[members[0], 0] != lo or spans[members[-1], 1] != hi:
            problems.append(f"{name}: chunk {k} tokens do not cover bytes [{lo}, {hi})")
            continue
        c_lo = cum[np.searchsorted(cum, lo, side="right") - 1]
        c_hi = cum[np.searchsorted(cum, hi, side="left")]
        for i in members:
            s, e = offsets[i]
            if spans[i, 0] == spans[i, 1]:  # empty: shares characters with the next token
                later = keep[(keep > i) & (spans[keep, 1] > spans[keep, 0])]
                if len(later) and s < e:
                    j = later[0]
                    lo_j = cum[np.searchsorted(cum, spans[j, 0], side="right") - 1]
                    if not lo_j <= cum[s] <= cum[e] <= max(cum[offsets[j, 1]], spans[j, 1]):
                        problems.append(f"{name}: empty token {i} is not next to token {j}")
            elif s < e and not shared[i] and not (c_lo <= cum[s] and cum[e] <= c_hi):
                problems.append(f"{name}: token {i} offsets lie outside chunk {k}")
        rendered = [view.token_bytes[ids[i]] for i in members]
        if view.info.lossless:
            if any(r is None for r in rendered):
                continue
            got, want = b"".join(rendered), data[lo:hi]
            if view.info.family == "metaspace":  # a literal '▁' in the text reads as a space
                want = want.replace(view.info.replacement.encode(), b" ")
            ok = got == want or (
                view.info.dummy_prefix and got == b" " + want and members[0] in firsts
            )
            if not ok and any(int(ids[i]) in view.splits for i in members):
                # an added token with lstrip/rstrip also covers the whitespace beside it
                ok = _squash(got.decode("utf-8", "replace")) == _squash(want.decode("utf-8"))
        else:  # compare after the tokenizer's normalizer; empty chunks go with the next one
            carry = rendered if carry is None else carry + rendered
            if lo == hi:
                continue
            rendered, carry = carry, None
            if any(r is None for r in rendered):
                continue
            got, want = b"".join(rendered), data[lo:hi]
            a, z = int(np.searchsorted(cum, lo)), int(np.searchsorted(cum, hi))
            if _mark_at(text, a) or _mark_at(text, z):
                continue  # normalization composes across the chunk edge (e.g. NFKC)
            piece = text[a:z]
            norm = view.backend.normalizer
            expected = norm.normalize_str(piece) if norm is not None else piece
            if view.info.family == "metaspace":
                expected = expected.replace(view.info.replacement, " ")
            ok = _squash(got.decode("utf-8", "replace")) == _squash(expected)
        if not ok:
            problems.append(f"{name}: chunk {k} spells {got!r}, text has {want!r}")
    return problems


def _offsets(view: TokenView, text: str, ids, add_special_tokens: bool) -> np.ndarray:
    enc = view.backend.encode(text, add_special_tokens=add_special_tokens)
    if enc.ids != ids.tolist():
        raise ValueError("the pair was not made with this tokenizer / add_special_tokens")
    return np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)


def verify(
    pair: AlignedPair,
    teacher: Any,
    student: Any,
    offsets: tuple | None = None,
    add_special_tokens: bool = False,
) -> list[str]:
    """Every broken invariant of one aligned pair, as sentences (empty when all hold).

    `offsets` (teacher, student character offsets) saves re-encoding the text.
    """
    tv, sv = token_view(teacher), token_view(student)
    if offsets is None:
        t_off = _offsets(tv, pair.text, pair.teacher_ids, add_special_tokens)
        s_off = _offsets(sv, pair.text, pair.student_ids, add_special_tokens)
    else:
        t_off, s_off = offsets
    al = pair.alignment
    out = []
    if al.n_chunks == 0 and (al.teacher_chunk >= 0).any() | (al.student_chunk >= 0).any():
        out.append("no chunks but some tokens have chunk ids")
    if al.n_chunks == 0 and len(pair.text) and (pair.teacher_spans[:, 0] >= 0).any():
        if (pair.student_spans[:, 0] >= 0).any():
            out.append("both sides have text tokens but no common chunk")
    if tv.fingerprint == sv.fingerprint and torch.equal(pair.teacher_ids, pair.student_ids):
        if not bool(al.one_to_one_mask().all()):
            out.append("identical tokenizers gave a chunk that is not one-to-one")
    a = (pair.teacher_ids, al.teacher_chunk, pair.teacher_spans, t_off)
    b = (pair.student_ids, al.student_chunk, pair.student_spans, s_off)
    out += _side_problems("teacher", tv, *a, pair)
    out += _side_problems("student", sv, *b, pair)
    return out


def check_pair(teacher: Any, student: Any, n: int = 1000, seed: int = 0) -> dict:
    """Align `n` random texts; count texts with a broken invariant and measure tokens/s.

    tokens_per_s counts tokens of both sides per second of the alignment step alone (one
    core); tokens_per_s_with_tokenize adds the time both tokenizers take to encode.
    """
    tv, sv = token_view(teacher), token_view(student)
    mismatches, tokens, t_align, t_tok, examples = 0, 0, 0.0, 0.0, []
    for text in random_texts(n, seed):
        t0 = time.perf_counter()
        te, se = tv.backend.encode(text), sv.backend.encode(text)
        t_ids, s_ids = np.asarray(te.ids, dtype=np.int64), np.asarray(se.ids, dtype=np.int64)
        t_off = np.asarray(te.offsets, dtype=np.int64).reshape(-1, 2)
        s_off = np.asarray(se.offsets, dtype=np.int64).reshape(-1, 2)
        t1 = time.perf_counter()
        pair = align_encoded(tv, sv, text, t_ids, t_off, s_ids, s_off)
        t2 = time.perf_counter()
        t_tok += t1 - t0
        t_align += t2 - t1
        tokens += len(t_ids) + len(s_ids)
        problems = verify(pair, tv, sv, offsets=(t_off, s_off))
        if problems:
            mismatches += 1
            if len(examples) < 5:
                examples.append({"text": text, "problems": problems[:3]})
    return {
        "pairs_checked": n,
        "mismatches": mismatches,
        "tokens_per_s": round(tokens / max(t_align, 1e-9)),
        "tokens_per_s_with_tokenize": round(tokens / max(t_align + t_tok, 1e-9)),
        "tokens": tokens,
        "examples": examples,
    }

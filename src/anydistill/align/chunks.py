"""Cut teacher and student token sequences into chunks that spell the same bytes.

Each token gets a [start, end) byte span of the ORIGINAL text from the tokenizer's character
offsets, so normalizers that rewrite the text (lowercasing, accent stripping, NFKC) and
leading-space markers ('Ġ', '▁') need no special casing. Spans are made to tile the text:
whitespace the offsets leave out goes to the following token. Where several tokens share one
character (byte-fallback `<0xNN>` tokens, byte-level tokens splitting an emoji) the character
is split by the tokens' rendered byte lengths, anchored at its end so a dummy-prefix '▁' that
spells no text gets zero bytes. A chunk boundary is a byte position that ends a token on both
sides; all of it is numpy on arrays, never a dense [Tt x Ts] matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anydistill.align.token_bytes import TokenView, token_view
from anydistill.errors import DataError, ModelError

_UNKNOWN = 1 << 40  # byte length used for tokens that render to nothing known (unk, specials)


@dataclass
class Alignment:
    """Chunk id per token on both sides; -1 marks a token with no counterpart (masked).

    Chunk ids run 0..n_chunks-1, non-decreasing along each sequence, and every chunk has at
    least one token on each side. `chunk_bounds[k]:chunk_bounds[k+1]` is chunk k's byte span
    (of the text; for chat alignments, of the message contents laid end to end).
    """

    teacher_chunk: Tensor
    student_chunk: Tensor
    n_chunks: int
    chunk_bounds: Tensor

    def counts(self) -> tuple[Tensor, Tensor]:
        """Tokens per chunk on the teacher and the student side."""
        t = self.teacher_chunk[self.teacher_chunk >= 0]
        s = self.student_chunk[self.student_chunk >= 0]
        n = self.n_chunks
        return torch.bincount(t, minlength=n), torch.bincount(s, minlength=n)

    def one_to_one_mask(self) -> Tensor:
        """Chunks made of exactly one teacher token and one student token."""
        t, s = self.counts()
        return (t == 1) & (s == 1)

    def chunk_spans(self) -> Tensor:
        """[n_chunks, 2] byte spans (start, end) of the chunks."""
        return torch.stack([self.chunk_bounds[:-1], self.chunk_bounds[1:]], dim=1)


@dataclass
class AlignedPair:
    """One text tokenized by both tokenizers, with per-token byte spans and the chunks."""

    text: str
    teacher_ids: Tensor
    student_ids: Tensor
    teacher_spans: Tensor  # [Tt, 2] byte span of each token in the text; -1 for masked
    student_spans: Tensor
    alignment: Alignment


@dataclass
class AlignedChat:
    """A conversation rendered by each side's own chat template, aligned.

    Content chunks align the message texts; each run of template tokens between two messages
    (role markers, special tokens, separators) is one chunk when both sides have some,
    otherwise its tokens are masked (-1).
    """

    teacher_text: str
    student_text: str
    teacher_ids: Tensor
    student_ids: Tensor
    alignment: Alignment
    chunk_message: Tensor  # [n_chunks] index of the message a chunk belongs to
    chunk_is_content: Tensor  # [n_chunks] True for message text, False for template


_IS_SPACE = np.array([chr(c).isspace() for c in range(0x3001)], dtype=bool)  # last: U+3000


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_to_byte(text: str) -> np.ndarray:
    """cum[i] = UTF-8 byte offset of character i (len(text)+1 entries)."""
    cp = _codepoints(text)
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    cum = np.zeros(len(cp) + 1, dtype=np.int64)
    np.cumsum(width, out=cum[1:])
    return cum


def _next_space(text: str) -> np.ndarray:
    """nxt[i] = index of the first whitespace character at or after i (len(text) if none)."""
    cp = _codepoints(text)
    space = _IS_SPACE[np.minimum(cp, 0x3000)] & (cp <= 0x3000)
    where = np.where(space, np.arange(len(cp)), len(cp))
    out = np.full(len(cp) + 1, len(cp), dtype=np.int64)
    out[:-1] = np.minimum.accumulate(where[::-1])[::-1]
    return out


def tile_ends(
    text: str,
    cum: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    lengths: np.ndarray,
    lossless: bool,
) -> np.ndarray:
    """Byte end of each token so that the spans tile the text (token i = [end[i-1], end[i])).

    starts/ends: character offsets; lengths: byte lengths for splitting shared characters
    (-1 unknown; too large only gives the earlier tokens of a shared run fewer bytes).

    Text between two tokens that no token covers goes to the following token from its first
    whitespace on, to the previous one before it (a combining mark or zero-width character a
    normalizer dropped belongs to the character before it). A token whose character range
    runs past the next token's start shares characters with it: for `lossless` tokenizers
    (tokens spell the text's bytes) the shared run is split by the tokens' byte lengths,
    counted back from its end (so a dummy-prefix '▁' gets no bytes); otherwise the run's last
    token takes the run and the others become empty (they join the chunk of the next token).
    """
    n = len(starts)
    total = int(cum[-1])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    nxt = np.full(n, len(cum) - 1, dtype=np.int64)
    nxt[:-1] = np.minimum.accumulate(starts[::-1])[::-1][1:]
    overlap = ends > nxt
    gap = ends < nxt
    cut_char = ends
    if gap.any():
        g = np.flatnonzero(gap)
        cut_char = ends.copy()
        cut_char[g] = np.minimum(_next_space(text)[ends[g]], nxt[g])
    cut = cum[cut_char]
    if overlap.any():
        inner = np.flatnonzero(overlap)
        clean = np.flatnonzero(~overlap)
        last = clean[np.searchsorted(clean, inner)]  # the token that ends the shared run
        if lossless:
            run = np.cumsum(np.where(lengths < 0, _UNKNOWN, lengths))
            cut[inner] = np.clip(cum[ends[last]] - (run[last] - run[inner]), 0, total)
        else:  # sub-character cuts mean nothing: the run's last token takes it all
            cut[inner] = 0
    cut = np.maximum.accumulate(np.minimum(cut, total))
    cut[-1] = total
    return cut


def chunk_ids(
    t_ends: np.ndarray, s_ends: np.ndarray, same: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk id of every token on both sides from their tiled byte ends, and chunk bounds.

    A boundary is a byte position where a non-empty token ends on both sides; an empty token
    joins the chunk of the next token. `same` (one tokenizer, same ids on both sides) makes
    every token its own chunk, empty ones included.
    """
    if same:
        ids = np.arange(len(t_ends))
        return ids, ids, np.concatenate(([0], t_ends)).astype(np.int64)
    t_empty = t_ends == np.concatenate(([0], t_ends[:-1]))
    s_empty = s_ends == np.concatenate(([0], s_ends[:-1]))
    a, b = t_ends[~t_empty], s_ends[~s_empty]  # both strictly increasing
    if len(a) == 0 or len(b) == 0:
        return np.full(len(t_ends), -1), np.full(len(s_ends), -1), np.zeros(1, np.int64)
    common = a[b[np.minimum(np.searchsorted(b, a), len(b) - 1)] == a]
    n = len(common)
    if n == 0:
        return np.full(len(t_ends), -1), np.full(len(s_ends), -1), np.zeros(1, np.int64)
    t = np.minimum(np.searchsorted(common, t_ends + t_empty), n - 1)
    s = np.minimum(np.searchsorted(common, s_ends + s_empty), n - 1)
    return t, s, np.concatenate(([0], common)).astype(np.int64)


def _masked_ids(view: TokenView, ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Special tokens that cover no text (bos/eos added by the post-processor)."""
    return view.is_special[ids] & (offsets[:, 0] == offsets[:, 1])


def _encode(view: TokenView, text: str, add_special_tokens: bool):
    enc = view.backend.encode(text, add_special_tokens=add_special_tokens)
    ids = np.asarray(enc.ids, dtype=np.int64)
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    return ids, offsets


def _side(view: TokenView, text: str, cum: np.ndarray, ids: np.ndarray, offsets: np.ndarray):
    """(kept-token index, tiled byte ends) of one side."""
    keep = np.flatnonzero(~_masked_ids(view, ids, offsets))
    kept = ids[keep]
    ends = tile_ends(
        text,
        cum,
        offsets[keep, 0],
        offsets[keep, 1],
        view.split_lengths[kept],
        lossless=view.info.lossless,
    )
    return keep, ends


def _spans(n: int, keep: np.ndarray, ends: np.ndarray) -> np.ndarray:
    spans = np.full((n, 2), -1, dtype=np.int64)
    if len(keep):
        spans[keep, 0] = np.concatenate(([0], ends[:-1]))
        spans[keep, 1] = ends
    return spans


def token_spans(
    tok: Any,
    text: str,
    ids: Sequence[int] | np.ndarray,
    offsets: Sequence[Sequence[int]] | np.ndarray,
) -> np.ndarray:
    """[n, 2] UTF-8 byte span of each token of one tokenization of `text`; -1 for tokens
    that cover no text (bos/eos added by a post-processor).

    `ids` and `offsets` (character offsets) are the tokenizer's own encoding of `text`. The
    spans tile the text's bytes in order: a dummy-prefix '▁' / 'Ġ' spells none of it, a '▁'
    the normalizer wrote for a space spells that space, and tokens that share a character
    (byte fallback) split it by the bytes each one spells.
    """
    view = token_view(tok)
    ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    if len(ids_arr) != len(off):
        raise ValueError(f"{len(ids_arr)} ids but {len(off)} offsets")
    if len(ids_arr) and (ids_arr.min() < 0 or ids_arr.max() >= len(view.lengths)):
        raise DataError("token ids fall outside the tokenizer's vocabulary")
    keep, ends = _side(view, text, char_to_byte(text), ids_arr, off)
    return _spans(len(ids_arr), keep, ends)


def _scatter(n: int, keep: np.ndarray, values: np.ndarray) -> Tensor:
    out = np.full(n, -1, dtype=np.int64)
    out[keep] = values
    return torch.from_numpy(out)


def align_encoded(
    teacher: TokenView,
    student: TokenView,
    text: str,
    t_ids: np.ndarray,
    t_offsets: np.ndarray,
    s_ids: np.ndarray,
    s_offsets: np.ndarray,
) -> AlignedPair:
    """Align two tokenizations of `text` given their ids and character offsets."""
    cum = char_to_byte(text)
    t_keep, t_ends = _side(teacher, text, cum, t_ids, t_offsets)
    s_keep, s_ends = _side(student, text, cum, s_ids, s_offsets)
    same = teacher.fingerprint == student.fingerprint and np.array_equal(t_ids, s_ids)
    t, s, bounds = chunk_ids(t_ends, s_ends, same)
    alignment = Alignment(
        teacher_chunk=_scatter(len(t_ids), t_keep, t),
        student_chunk=_scatter(len(s_ids), s_keep, s),
        n_chunks=len(bounds) - 1,
        chunk_bounds=torch.from_numpy(bounds),
    )
    return AlignedPair(
        text=text,
        teacher_ids=torch.from_numpy(t_ids),
        student_ids=torch.from_numpy(s_ids),
        teacher_spans=torch.from_numpy(_spans(len(t_ids), t_keep, t_ends)),
        student_spans=torch.from_numpy(_spans(len(s_ids), s_keep, s_ends)),
        alignment=alignment,
    )


def align_texts(
    teacher_tok: Any, student_tok: Any, text: str, add_special_tokens: bool = False
) -> AlignedPair:
    """Tokenize `text` with both tokenizers and cut both sequences into common-byte chunks.

    Special tokens the tokenizers add (bos/eos, with add_special_tokens) are masked (-1).
    """
    teacher, student = token_view(teacher_tok), token_view(student_tok)
    t_ids, t_off = _encode(teacher, text, add_special_tokens)
    s_ids, s_off = _encode(student, text, add_special_tokens)
    return align_encoded(teacher, student, text, t_ids, t_off, s_ids, s_off)


def _as_ids(ids: Sequence[int] | Tensor, view: TokenView, side: str) -> np.ndarray:
    arr = ids.cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    arr = arr.astype(np.int64).reshape(-1)
    if len(arr) and (arr.min() < 0 or arr.max() >= len(view.lengths)):
        raise DataError(f"{side} ids fall outside the {side} tokenizer's vocabulary")
    return arr


def _id_lengths(
    view: TokenView, ids: np.ndarray, keep_first_space: bool
) -> tuple[np.ndarray, bytes]:
    """(byte length per token with -1 for specials, the bytes spelled) from ids alone.

    Dummy-prefix spaces are dropped; `keep_first_space` keeps the first one of a tokenizer
    that adds it only where the text has no space (its ids cannot tell the two apart).
    """
    lengths = view.lengths[ids].copy()
    info = view.info
    if info.dummy_prefix and len(ids):
        cuts = np.fromiter((i in view.splits for i in ids.tolist()), bool, len(ids))
        starts = np.flatnonzero(np.concatenate(([True], cuts[:-1])) & (lengths > 0))
        if info.dummy_first_only:
            starts = starts[:1]
        if keep_first_space and info.dummy_conditional:
            starts = starts[1:]
        for i in starts:
            if view.token_bytes[ids[i]].startswith(b" "):
                lengths[i] -= 1
    pieces = [
        view.token_bytes[i][len(view.token_bytes[i]) - n :]
        for i, n in zip(ids.tolist(), lengths.tolist(), strict=True)
        if n > 0
    ]
    return lengths, b"".join(pieces)


def byte_lengths(tok: Any, ids: Sequence[int] | Tensor) -> np.ndarray:
    """int64 [n]: the UTF-8 bytes of the text that each token of one encoded sequence spells,
    from the ids alone (bits per byte over any subset of the tokens).

    '▁' / 'Ġ' marking a space counts one byte, a byte-fallback token one byte, a special
    token none, and a dummy-prefix space none (a tokenizer that adds it only where the text
    has no space already is read as having added it). Exact for tokenizers that spell their
    input byte for byte (`token_view(tok).info.lossless`), except a literal '▁' in the text
    of a '▁' family (read as a space); others spell their normalized text.
    """
    view = token_view(tok)
    arr = ids.cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    arr = arr.astype(np.int64).reshape(-1)
    if len(arr) and (arr.min() < 0 or arr.max() >= len(view.lengths)):
        raise DataError("token ids fall outside the tokenizer's vocabulary")
    lengths, _ = _id_lengths(view, arr, keep_first_space=False)
    return np.maximum(lengths, 0)


def align_ids(
    teacher_tok: Any,
    student_tok: Any,
    teacher_ids: Sequence[int] | Tensor,
    student_ids: Sequence[int] | Tensor,
) -> Alignment:
    """Align token ids without the text, for tokenizers whose tokens spell the text exactly.

    Works for byte-level BPE, SentencePiece with byte fallback and pure-byte tokenizers;
    dummy-prefix spaces are dropped. Raises ModelError for tokenizers that normalize the text
    (bert, t5) and DataError when the two sides spell different bytes.
    """
    teacher, student = token_view(teacher_tok), token_view(student_tok)
    for view, side in ((teacher, "teacher"), (student, "student")):
        if not view.info.lossless:
            raise ModelError(
                f"the {side} tokenizer ({view.info.family}, {view.info.model}) does not spell "
                "its input text byte for byte; align from text with align_texts instead"
            )
    t_ids = _as_ids(teacher_ids, teacher, "teacher")
    s_ids = _as_ids(student_ids, student, "student")
    for keep_t, keep_s in ((False, False), (True, False), (False, True), (True, True)):
        t_len, t_bytes = _id_lengths(teacher, t_ids, keep_t)
        s_len, s_bytes = _id_lengths(student, s_ids, keep_s)
        if t_bytes == s_bytes:
            break
    else:
        raise DataError(
            f"teacher and student ids spell different bytes ({len(t_bytes)} vs "
            f"{len(s_bytes)} bytes); tokenize the same text on both sides"
        )
    t_keep, s_keep = np.flatnonzero(t_len >= 0), np.flatnonzero(s_len >= 0)
    t_ends, s_ends = np.cumsum(t_len[t_keep]), np.cumsum(s_len[s_keep])
    same = teacher.fingerprint == student.fingerprint and np.array_equal(t_ids, s_ids)
    t, s, bounds = chunk_ids(t_ends, s_ends, same)
    return Alignment(
        teacher_chunk=_scatter(len(t_ids), t_keep, t),
        student_chunk=_scatter(len(s_ids), s_keep, s),
        n_chunks=len(bounds) - 1,
        chunk_bounds=torch.from_numpy(bounds),
    )


# ---- chat ---------------------------------------------------------------------------------

_SENTINEL = "\ue000{}\ue001"


def _render_chat(tok: Any, messages: list[dict], side: str, **kwargs) -> tuple[str, list]:
    """The template's text and each message content's character span in it.

    The template is rendered once with placeholder contents to find where contents go, then
    with the real ones; a template that rewrites content other than trimming is refused.
    """
    if not hasattr(tok, "apply_chat_template"):
        raise ModelError(f"the {side} tokenizer has no chat template support (transformers)")
    for i, m in enumerate(messages):
        if not isinstance(m.get("content"), str):
            raise DataError(f"message {i} has no string 'content'; chat alignment needs text")
    marked = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    try:
        skeleton = tok.apply_chat_template(marked, tokenize=False, **kwargs)
        real = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as err:  # jinja errors, missing template
        raise ModelError(f"the {side} tokenizer cannot render this chat ({err})") from None
    for strip in (False, True):
        out, spans, pos, size = [], [], 0, 0
        for i, m in enumerate(messages):
            mark = _SENTINEL.format(i)
            at = skeleton.find(mark, pos)
            if at < 0:
                raise DataError(f"the {side} chat template drops message {i}")
            content = m["content"].strip() if strip else m["content"]
            out += [skeleton[pos:at], content]
            size += at - pos
            spans.append((size, size + len(content)))
            size += len(content)
            pos = at + len(mark)
        out.append(skeleton[pos:])
        if "".join(out) == real:
            return real, spans
    raise DataError(
        f"the {side} chat template changes message text beyond trimming; cannot locate it"
    )


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    return start + lead, start + lead + len(piece.strip())


def _content_ranges(offsets: np.ndarray, spans: list) -> list[tuple[int, int]]:
    """Token index range [a, b) overlapping each content span, disjoint and in order."""
    emax = np.maximum.accumulate(offsets[:, 1]) if len(offsets) else offsets[:, 1]
    smax = np.maximum.accumulate(offsets[:, 0]) if len(offsets) else offsets[:, 0]
    ranges, prev = [], 0
    for cs, ce in spans:
        a = max(int(np.searchsorted(emax, cs, side="right")), prev)
        b = max(int(np.searchsorted(smax, ce, side="left")), a) if ce > cs else a
        ranges.append((a, b))
        prev = b
    return ranges


def align_chat(
    teacher_tok: Any,
    student_tok: Any,
    messages: list[dict],
    add_generation_prompt: bool = False,
) -> AlignedChat:
    """Render `messages` with each side's chat template and align them.

    Message texts are aligned like `align_texts`; the template tokens between two messages
    (roles, markers, separators) become one chunk per gap, masked when one side has none.
    """
    kw = {"add_generation_prompt": add_generation_prompt}
    t_view, s_view = token_view(teacher_tok), token_view(student_tok)
    t_text, t_spans = _render_chat(teacher_tok, messages, "teacher", **kw)
    s_text, s_spans = _render_chat(student_tok, messages, "student", **kw)
    for m in range(len(messages)):  # one side trimmed the content: align the trimmed text
        (t0, t1), (s0, s1) = t_spans[m], s_spans[m]
        if t_text[t0:t1] != s_text[s0:s1]:
            t_spans[m], s_spans[m] = _trim(t_text, t0, t1), _trim(s_text, s0, s1)
    t_ids, t_off = _encode(t_view, t_text, False)
    s_ids, s_off = _encode(s_view, s_text, False)
    t_rng, s_rng = _content_ranges(t_off, t_spans), _content_ranges(s_off, s_spans)
    t_chunk, s_chunk = np.full(len(t_ids), -1), np.full(len(s_ids), -1)
    bounds, owner, is_content = [0], [], []
    base, t_prev, s_prev = 0, 0, 0
    for m in range(len(messages)):
        (ta, tb), (sa, sb) = t_rng[m], s_rng[m]
        content = t_text[t_spans[m][0] : t_spans[m][1]]
        if ta > t_prev and sa > s_prev:  # template tokens before message m on both sides
            t_chunk[t_prev:ta], s_chunk[s_prev:sa] = len(owner), len(owner)
            bounds.append(base)
            owner.append(m)
            is_content.append(False)
        cum = char_to_byte(content)
        ends = []
        for view, text_spans, ids, off, a, b in (
            (t_view, t_spans, t_ids, t_off, ta, tb),
            (s_view, s_spans, s_ids, s_off, sa, sb),
        ):
            local = np.clip(off[a:b] - text_spans[m][0], 0, len(content))
            keep, e = _side(view, content, cum, ids[a:b], local)
            ends.append((keep + a, e))
        (t_keep, t_e), (s_keep, s_e) = ends
        same = t_view.fingerprint == s_view.fingerprint and np.array_equal(
            t_ids[ta:tb], s_ids[sa:sb]
        )
        t, s, cb = chunk_ids(t_e, s_e, same)
        first = len(owner)
        if len(cb) > 1:
            t_chunk[t_keep], s_chunk[s_keep] = t + first, s + first
        bounds += (cb[1:] + base).tolist()
        owner += [m] * (len(cb) - 1)
        is_content += [True] * (len(cb) - 1)
        base += int(cum[-1])
        t_prev, s_prev = tb, sb
    if len(t_ids) > t_prev and len(s_ids) > s_prev:  # trailing template (generation prompt)
        t_chunk[t_prev:], s_chunk[s_prev:] = len(owner), len(owner)
        bounds.append(base)
        owner.append(len(messages) - 1)
        is_content.append(False)
    alignment = Alignment(
        teacher_chunk=torch.from_numpy(t_chunk.astype(np.int64)),
        student_chunk=torch.from_numpy(s_chunk.astype(np.int64)),
        n_chunks=len(owner),
        chunk_bounds=torch.tensor(bounds, dtype=torch.long),
    )
    return AlignedChat(
        teacher_text=t_text,
        student_text=s_text,
        teacher_ids=torch.from_numpy(t_ids),
        student_ids=torch.from_numpy(s_ids),
        alignment=alignment,
        chunk_message=torch.tensor(owner, dtype=torch.long),
        chunk_is_content=torch.tensor(is_content, dtype=torch.bool),
    )

"""Every vocabulary id of a tokenizer rendered as the bytes it stands for.

Cross-tokenizer losses compare tokens by the text they spell, and the alignment needs byte
lengths to split one character among byte tokens. Token strings are not bytes: byte-level BPE
spells bytes through GPT-2's byte-to-unicode map ('Ġ' = space), SentencePiece uses '▁' for a
space and `<0xNN>` byte-fallback tokens, WordPiece marks continuations with '##'. The family is
read from the backend tokenizer's JSON (model, normalizer, pre-tokenizer, decoder).

'▁' marks a space whether a Metaspace pre-tokenizer writes it or the normalizer does
(`Replace(" ", "▁")`, as Llama-2/Mistral-style and Gemma-style files ship, with or without
`Prepend("▁")` / `Prepend(" ")` for the dummy prefix). Added tokens are read the way the
tokenizer matches them: one that is also a model piece is spelled as the model spells it (Gemma
lists its whitespace runs '▁▁', '▁▁▁', ... as added tokens the model emits from spaces), a
`normalized` one spells its normalized content, any other one its literal content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from anydistill.errors import ModelError

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Pre-tokenizers that keep every byte of the text in the tokens.
_LOSSLESS_PRE = {"ByteLevel", "Split", "Metaspace", "Digits", "Punctuation", "Sequence"}
_SPACE = ({"String": " "}, {"Regex": " "})  # a Replace pattern matching one space


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's unicode-char -> byte map (inverse of `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@dataclass(frozen=True)
class TokenizerInfo:
    """How a tokenizer's token strings map to bytes, and whether its tokens spell the text.

    family: "byte_level", "metaspace", "wordpiece", "bytes" or "plain".
    lossless: the tokens' bytes concatenate to the input text (plus dummy-prefix spaces);
    false when a normalizer rewrites the text, a pre-tokenizer drops whitespace, or an
    unknown token can appear.
    dummy_prefix: a space ('▁' / 'Ġ') is added before the first word of each text segment
    (a segment is the text between added tokens); dummy_conditional: only where the segment
    does not start with a space already; dummy_first_only: only in the first segment.
    dummy_in_normalizer: the normalizer adds it (`Prepend`), so only added tokens matched
    before normalization (not `normalized` ones) start a segment.
    normalizer_marks: the normalizer itself writes the space marker (`Replace(" ", "▁")`),
    so text matched after normalization (model pieces, `normalized` added tokens) spells
    '▁' for a space.
    """

    family: str
    model: str
    byte_fallback: bool
    dummy_prefix: bool
    lossless: bool
    dummy_conditional: bool = False
    dummy_first_only: bool = False
    replacement: str = "▁"
    continuing_prefix: str = ""
    dummy_in_normalizer: bool = False
    normalizer_marks: bool = False


def _components(node: Any) -> list[dict]:
    """Flatten a normalizer/pre-tokenizer/decoder JSON node (Sequences included)."""
    if not isinstance(node, dict):
        return []
    out = [node]
    for key in ("normalizers", "pretokenizers", "decoders", "processors"):
        for child in node.get(key) or []:
            out += _components(child)
    return out


def _model_type(model: dict) -> str:
    if "type" in model:
        return model["type"]
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    return "BPE" if "merges" in model else "WordPiece"


def _space_marks(norms: list[dict]) -> list[dict]:
    """Normalizer `Replace` steps that turn each space into one marker character."""
    return [
        c
        for c in norms
        if c.get("type") == "Replace"
        and c.get("pattern") in _SPACE
        and len(c.get("content") or "") == 1
        and c.get("content") != " "
    ]


def _normalizer_dummy(norms: list[dict], replacement: str) -> bool:
    """A `Prepend` of the marker, or of a space that a later step turns into the marker."""
    for k, c in enumerate(norms):
        if c.get("type") != "Prepend":
            continue
        if c.get("prepend") == replacement:
            return True
        later = _space_marks(norms[k + 1 :])
        if c.get("prepend") == " " and any(m.get("content") == replacement for m in later):
            return True
    return False


def detect_info(spec: dict) -> TokenizerInfo:
    """Read the family and its byte rules from a `tokenizer.json` dict."""
    model = spec.get("model") or {}
    mtype = _model_type(model)
    norms = _components(spec.get("normalizer"))
    pres = _components(spec.get("pre_tokenizer"))
    decs = _components(spec.get("decoder"))
    types = {c.get("type") for c in pres + decs}
    byte_fallback = bool(model.get("byte_fallback")) or "ByteFallback" in types
    metas = [c for c in pres + decs if c.get("type") == "Metaspace"]
    marks = _space_marks(norms)
    if metas:
        replacement = metas[0].get("replacement", "▁")
    else:
        replacement = marks[0]["content"] if marks else "▁"
    replaces_space = any(c.get("content") == replacement for c in marks)
    byte_norm = any(c.get("type") == "ByteLevel" for c in norms)
    dummy = in_norm = _normalizer_dummy(norms, replacement)
    # transformers' generic SentencePiece conversion doubles a leading marker, so that the
    # Metaspace prefix below is added whether or not the text starts with a space
    lead = {"Regex": "\\A" + replacement}
    doubled = replaces_space and any(
        c.get("type") == "Replace"
        and c.get("pattern") == lead
        and c.get("content") == replacement * 2
        for c in norms
    )
    conditional = first_only = prefix_scheme = False
    for c in pres:
        if c.get("type") == "Metaspace":
            scheme = c.get("prepend_scheme", "always" if c.get("add_prefix_space") else "never")
            if scheme in ("always", "first") and not dummy:
                dummy = prefix_scheme = True
                conditional = not doubled
                first_only = scheme == "first"
        if c.get("type") == "ByteLevel" and c.get("add_prefix_space") and not dummy:
            dummy = conditional = True

    vocab = model.get("vocab") or {}
    pieces = [p[0] for p in vocab] if isinstance(vocab, list) else list(vocab)
    if pieces and all(_BYTE_TOKEN.fullmatch(p) for p in pieces):
        family = "bytes"
    elif "ByteLevel" in types or byte_norm:
        family = "byte_level"
    elif mtype == "WordPiece":
        family = "wordpiece"
    elif metas or replaces_space:
        family = "metaspace"
    else:
        family = "plain"

    def norm_lossless(c: dict) -> bool:
        kind = c.get("type")
        if kind in ("Sequence", "ByteLevel"):
            return True
        if kind == "Prepend":  # a dummy prefix only
            return in_norm and c.get("prepend") in (replacement, " ")
        if kind == "Replace":
            if c.get("pattern") in _SPACE:
                return c.get("content") == replacement
            return doubled and prefix_scheme and c.get("pattern") == lead
        return False

    pre_ok = all(c.get("type") in _LOSSLESS_PRE for c in pres) and all(
        c.get("behavior") != "Removed" or c.get("invert") for c in pres if c["type"] == "Split"
    )
    no_unk = family in ("byte_level", "bytes") or byte_fallback
    lossless = all(norm_lossless(c) for c in norms) and pre_ok and no_unk
    return TokenizerInfo(
        family=family,
        model=mtype,
        byte_fallback=byte_fallback,
        dummy_prefix=dummy,
        dummy_conditional=conditional,
        dummy_first_only=first_only,
        lossless=lossless and mtype != "WordPiece",
        replacement=replacement,
        continuing_prefix=model.get("continuing_subword_prefix") or "",
        dummy_in_normalizer=in_norm,
        normalizer_marks=(family == "metaspace" and replaces_space)
        or (family == "byte_level" and byte_norm),
    )


def render_token(token: str, info: TokenizerInfo) -> bytes:
    """The bytes one (non-special, non-added) vocabulary string stands for."""
    if info.byte_fallback or info.family == "bytes":
        m = _BYTE_TOKEN.fullmatch(token)
        if m:
            return bytes([int(m.group(1), 16)])
    if info.family == "byte_level":
        table = byte_decoder()
        if all(c in table for c in token):
            return bytes(table[c] for c in token)
        return token.encode("utf-8")
    if info.family == "wordpiece" and info.continuing_prefix:
        if token.startswith(info.continuing_prefix):
            token = token[len(info.continuing_prefix) :]
        return token.encode("utf-8")
    if info.family == "metaspace":
        return token.replace(info.replacement, " ").encode("utf-8")
    return token.encode("utf-8")


def backend_of(tok: Any):
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return backend
    if hasattr(tok, "encode_batch") and hasattr(tok, "to_str"):
        return tok
    raise ModelError(
        f"{type(tok).__name__} has no fast backend; cross-tokenizer alignment needs a fast "
        "tokenizer (a tokenizer.json)"
    )


@dataclass(frozen=True)
class TokenView:
    """One tokenizer prepared for alignment: its backend, family and per-id bytes.

    token_bytes[i] is None for special tokens (bos/eos/pad/chat markers) and unknown tokens;
    lengths[i] is the byte length, -1 where token_bytes is None; is_special marks special ids.
    split_lengths[i] is the length used to split a character shared by several tokens: the
    most bytes the token can stand for in the text ('▁' counts 3, as a literal '▁' would).
    `added` holds every added-token id; `splits` those that cut the text into segments (where
    a dummy prefix starts again): not the ones the model also emits (Gemma's '▁▁'), and not
    `normalized` ones when the normalizer adds the dummy prefix (they are matched after it).
    """

    backend: Any
    info: TokenizerInfo
    token_bytes: list[bytes | None]
    lengths: np.ndarray
    split_lengths: np.ndarray
    is_special: np.ndarray
    added: frozenset[int]
    unk_id: int | None
    fingerprint: int  # equal for vocabularies whose every id spells the same bytes
    splits: frozenset[int] = frozenset()


def _emitted(entry: dict, model_vocab: dict[str, int], info: TokenizerInfo) -> bool:
    """An added token that is also a model piece the model spells differently from its
    content: the model emits it (the tokenizer matches the content itself only in text that
    holds a literal marker, which reads as a space anyway), so it is spelled as a model piece.
    """
    content = entry["content"]
    same_id = model_vocab.get(content) == entry["id"]
    return same_id and render_token(content, info) != content.encode("utf-8")


def _added_source(entry: dict, backend: Any, info: TokenizerInfo) -> tuple[str, bool]:
    """(the string a non-emitted, non-special added token spells, whether its markers read
    as spaces): a `normalized` one is matched in the normalized text, so it spells its
    normalized content; any other one its literal content."""
    if entry.get("normalized") and backend.normalizer is not None:
        return backend.normalizer.normalize_str(entry["content"]), info.normalizer_marks
    return entry["content"], False


def build_view(tok: Any) -> TokenView:
    """Render the whole vocabulary once (about 0.1 s for a 128k vocabulary)."""
    backend = backend_of(tok)
    spec = json.loads(backend.to_str())
    info = detect_info(spec)
    vocab = backend.get_vocab(with_added_tokens=True)
    model_vocab = backend.get_vocab(with_added_tokens=False)
    size = max(vocab.values()) + 1 if vocab else 0
    strings: list[str | None] = [None] * size
    for piece, i in vocab.items():
        strings[i] = piece
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    model = spec.get("model") or {}
    unk = model.get("unk_token")
    unk_id = vocab.get(unk) if isinstance(unk, str) else model.get("unk_id")
    rendered: list[bytes | None] = []
    marked: dict[int, str] = {}  # ids whose bytes read markers of this string as spaces
    splits = set()
    special = np.zeros(size, dtype=bool)
    for i, piece in enumerate(strings):
        if i in added:
            entry = added[i]
            special[i] = bool(entry.get("special"))
            if special[i]:
                rendered.append(None)
                splits.add(i)
                continue
            emitted = _emitted(entry, model_vocab, info)
            source, as_model = (
                (entry["content"], True) if emitted else _added_source(entry, backend, info)
            )
            rendered.append(render_token(source, info) if as_model else source.encode("utf-8"))
            if as_model:
                marked[i] = source
            if not emitted and not (info.dummy_in_normalizer and entry.get("normalized")):
                splits.add(i)
        elif piece is None or i == unk_id:
            rendered.append(None)
        else:
            rendered.append(render_token(piece, info))
            marked[i] = piece
    lengths = np.array([-1 if b is None else len(b) for b in rendered], dtype=np.int64)
    split = lengths
    if info.family == "metaspace":  # a space read from a marker may be a literal marker
        split = lengths.copy()
        mark = info.replacement.encode("utf-8")
        for i, source in marked.items():
            if lengths[i] >= 0 and info.replacement in source:
                read = source.encode("utf-8").count(mark) - rendered[i].count(mark)
                split[i] = lengths[i] + (len(mark) - 1) * read
    fingerprint = hash((tuple(rendered), special.tobytes()))
    return TokenView(
        backend,
        info,
        rendered,
        lengths,
        split,
        special,
        frozenset(added),
        unk_id,
        fingerprint,
        frozenset(splits),
    )


_VIEWS: dict[int, tuple[Any, TokenView]] = {}


def token_view(tok: Any) -> TokenView:
    """Cached `build_view` (keyed by object identity; the object is kept alive with it)."""
    if isinstance(tok, TokenView):
        return tok
    hit = _VIEWS.get(id(tok))
    if hit is not None and hit[0] is tok:
        return hit[1]
    view = build_view(tok)
    if len(_VIEWS) >= 32:
        _VIEWS.pop(next(iter(_VIEWS)))
    _VIEWS[id(tok)] = (tok, view)
    return view


def token_bytes(tok: Any) -> list[bytes | None]:
    """Bytes of every id of `tok` (None for special and unknown tokens)."""
    return token_view(tok).token_bytes

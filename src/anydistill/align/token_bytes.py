"""Every vocabulary id of a tokenizer rendered as the bytes it stands for.

Cross-tokenizer losses compare tokens by the text they spell, and the alignment needs byte
lengths to split one character among byte tokens. Token strings are not bytes: byte-level BPE
spells bytes through GPT-2's byte-to-unicode map ('Ġ' = space), SentencePiece uses '▁' for a
space and `<0xNN>` byte-fallback tokens, WordPiece marks continuations with '##'. The family is
read from the backend tokenizer's JSON (model, normalizer, pre-tokenizer, decoder).
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
# Normalizers / pre-tokenizers that keep every byte of the text in the tokens.
_LOSSLESS_NORMALIZERS = {"Prepend", "Replace", "Sequence"}
_LOSSLESS_PRE = {"ByteLevel", "Split", "Metaspace", "Digits", "Punctuation", "Sequence"}


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
    replacement = metas[0].get("replacement", "▁") if metas else "▁"
    replaces_space = any(
        c.get("type") == "Replace" and c.get("content") == replacement for c in norms
    )
    dummy = any(c.get("type") == "Prepend" and c.get("prepend") == replacement for c in norms)
    conditional = first_only = False
    for c in pres:
        if c.get("type") == "Metaspace":
            scheme = c.get("prepend_scheme", "always" if c.get("add_prefix_space") else "never")
            if scheme in ("always", "first") and not dummy:
                dummy = conditional = True
                first_only = scheme == "first"
        if c.get("type") == "ByteLevel" and c.get("add_prefix_space") and not dummy:
            dummy = conditional = True

    vocab = model.get("vocab") or {}
    pieces = [p[0] for p in vocab] if isinstance(vocab, list) else list(vocab)
    if pieces and all(_BYTE_TOKEN.fullmatch(p) for p in pieces):
        family = "bytes"
    elif "ByteLevel" in types:
        family = "byte_level"
    elif mtype == "WordPiece":
        family = "wordpiece"
    elif metas or replaces_space:
        family = "metaspace"
    else:
        family = "plain"

    norm_ok = all(c.get("type") in _LOSSLESS_NORMALIZERS for c in norms) and all(
        c.get("type") != "Replace"
        or (c.get("content") == replacement and c.get("pattern") == {"String": " "})
        for c in norms
    )
    pre_ok = all(c.get("type") in _LOSSLESS_PRE for c in pres) and all(
        c.get("behavior") != "Removed" or c.get("invert") for c in pres if c["type"] == "Split"
    )
    no_unk = family in ("byte_level", "bytes") or byte_fallback
    return TokenizerInfo(
        family=family,
        model=mtype,
        byte_fallback=byte_fallback,
        dummy_prefix=dummy,
        dummy_conditional=conditional,
        dummy_first_only=first_only,
        lossless=norm_ok and pre_ok and no_unk and mtype != "WordPiece",
        replacement=replacement,
        continuing_prefix=model.get("continuing_subword_prefix") or "",
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


def build_view(tok: Any) -> TokenView:
    """Render the whole vocabulary once (about 0.1 s for a 128k vocabulary)."""
    backend = backend_of(tok)
    spec = json.loads(backend.to_str())
    info = detect_info(spec)
    vocab = backend.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1 if vocab else 0
    strings: list[str | None] = [None] * size
    for piece, i in vocab.items():
        strings[i] = piece
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    model = spec.get("model") or {}
    unk = model.get("unk_token")
    unk_id = vocab.get(unk) if isinstance(unk, str) else model.get("unk_id")
    rendered: list[bytes | None] = []
    special = np.zeros(size, dtype=bool)
    for i, piece in enumerate(strings):
        if i in added:
            special[i] = bool(added[i].get("special"))
            rendered.append(None if special[i] else added[i]["content"].encode("utf-8"))
        elif piece is None or i == unk_id:
            rendered.append(None)
        else:
            rendered.append(render_token(piece, info))
    lengths = np.array([-1 if b is None else len(b) for b in rendered], dtype=np.int64)
    split = lengths
    if info.family == "metaspace":
        split = lengths.copy()
        for i, piece in enumerate(strings):
            if lengths[i] >= 0 and piece is not None and info.replacement in piece:
                split[i] = lengths[i] + 2 * piece.count(info.replacement)
    fingerprint = hash((tuple(rendered), special.tobytes()))
    return TokenView(
        backend, info, rendered, lengths, split, special, frozenset(added), unk_id, fingerprint
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

"""Cross-tokenizer alignment: token bytes, common-byte chunks, and their checks."""

from anydistill.align.check import check_pair, random_texts, verify
from anydistill.align.chunks import (
    AlignedChat,
    AlignedPair,
    Alignment,
    align_chat,
    align_encoded,
    align_ids,
    align_texts,
    byte_lengths,
    char_to_byte,
    chunk_ids,
    tile_ends,
    token_spans,
)
from anydistill.align.token_bytes import (
    TokenizerInfo,
    TokenView,
    byte_decoder,
    detect_info,
    render_token,
    token_bytes,
    token_view,
)

__all__ = [
    "AlignedChat",
    "AlignedPair",
    "Alignment",
    "TokenView",
    "TokenizerInfo",
    "align_chat",
    "align_encoded",
    "align_ids",
    "align_texts",
    "byte_decoder",
    "byte_lengths",
    "char_to_byte",
    "check_pair",
    "chunk_ids",
    "detect_info",
    "random_texts",
    "render_token",
    "tile_ends",
    "token_bytes",
    "token_spans",
    "token_view",
    "verify",
]

"""Train a tiny byte-level BPE tokenizer for the demo and for tests, fully offline.

Byte-level means every string, non-ASCII included, encodes and decodes back exactly, and
no ``<unk>`` is ever needed. The result is a `transformers.PreTrainedTokenizerFast` with
pad/bos/eos set and a chat template, so it saves and loads like any hub tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "PAD_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "train_tokenizer",
    "tokenizer_fingerprint",
]

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Order fixes the ids: pad=0, bos=1, eos=2, user=3, assistant=4.
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN]

# <|user|>question<|assistant|>answer<|eos|> per turn. A system message is written unmarked
# before the first turn. {% generation %} marks what the assistant wrote, so
# apply_chat_template(..., return_assistant_tokens_mask=True) can build a loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}"
    "<|user|>{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|eos|>{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

_BYTE_ALPHABET_SIZE = 256


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for `transformers`.

    The vocabulary holds the 5 special tokens, all 256 byte symbols, then merges up to
    ``vocab_size`` (fewer when the text has no more pairs seen ``min_frequency`` times).
    The same texts always give the same vocabulary. No BOS/EOS is added on encode; the
    data pipeline decides where sequences start and end.
    """
    minimum = len(SPECIAL_TOKENS) + _BYTE_ALPHABET_SIZE
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least {minimum} (5 special tokens + 256 bytes), "
            f"got {vocab_size}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets on exact byte spans (used by cross-tokenizer alignment).
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        # All 256 bytes up front, so text unseen in training still encodes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        clean_up_tokenization_spaces=False,  # decode must return the exact input text
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A sha256 hex digest of what decides token ids: vocab, merges, specials, pre-tokenizer.

    Two tokenizers with the same fingerprint map every text to the same ids, so caches of
    teacher outputs can be keyed by it. Works for slow tokenizers too (vocab and specials).
    """
    payload: dict[str, object] = {
        "vocab": sorted(tok.get_vocab().items()),
        "special_tokens": sorted(str(t) for t in tok.all_special_tokens),
        "special_ids": {
            name: getattr(tok, f"{name}_token_id", None) for name in ("pad", "bos", "eos", "unk")
        },
    }
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        model = state.get("model") or {}
        # tokenizers writes merges as "a b" strings in old files and [a, b] pairs in new ones.
        payload["merges"] = [
            m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges", [])
        ]
        payload["model_type"] = model.get("type")
        payload["normalizer"] = state.get("normalizer")
        payload["pre_tokenizer"] = state.get("pre_tokenizer")
        payload["added_tokens"] = sorted(
            (t["id"], t["content"], bool(t.get("special"))) for t in state.get("added_tokens", [])
        )
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()

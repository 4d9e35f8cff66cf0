"""Load tokenizers and check that teacher and student share one."""

from __future__ import annotations

import hashlib

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from anydistill.errors import ModelError
from anydistill.models.loading import load_failure, local_dir


def load_tokenizer(
    path: str, *, field: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory or the hub; a local-looking path that does not exist
    and an offline hub are said as such, before any network wait."""
    local = local_dir(path, field, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(
            str(local or path), revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise load_failure(path, field, "tokenizer", err, local is not None) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # padding is masked out; any id works
    return tok


def real_vocab_size(tok: PreTrainedTokenizerBase) -> int:
    """Ids the tokenizer can emit: base vocab + added tokens (heads may carry padding rows)."""
    return len(tok)


def check_same_tokenizer(
    teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase
) -> None:
    """Same vocabulary (token -> id) and same special tokens, or one clear sentence."""
    tv, sv = teacher.get_vocab(), student.get_vocab()
    if tv != sv:
        only_t = sorted(set(tv) - set(sv))[:3]
        only_s = sorted(set(sv) - set(tv))[:3]
        moved = [t for t in tv if t in sv and tv[t] != sv[t]][:3]
        detail = (
            f"sizes {len(tv)} vs {len(sv)}"
            + (f", teacher-only tokens {only_t}" if only_t else "")
            + (f", student-only tokens {only_s}" if only_s else "")
            + (f", tokens with different ids {moved}" if moved else "")
        )
        raise ModelError(
            "teacher and student tokenizers differ "
            f"({detail}); same-tokenizer distillation needs one vocabulary — use a "
            "cross-tokenizer term (objective.terms kind alm, uld, gold_hybrid or mined) for "
            "this pair"
        )
    for attr in ("bos_token", "eos_token"):
        a, b = getattr(teacher, attr), getattr(student, attr)
        if a != b:
            raise ModelError(
                f"teacher and student tokenizers disagree on {attr} ({a!r} vs {b!r}); set "
                "student.tokenizer to the teacher's tokenizer or use a cross-tokenizer term "
                "(alm, uld, gold_hybrid or mined)"
            )


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of the vocabulary (token -> id) and the special tokens."""
    h = hashlib.sha256()
    for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode())
    for name in ("bos_token", "eos_token", "pad_token"):
        h.update(f"{name}={getattr(tokenizer, name, None)}\n".encode())
    return h.hexdigest()[:32]

"""Cross-tokenizer loss terms: alm, uld, gold_hybrid and mined, on byte-aligned chunks.

Every term takes one `CrossBatch` (student rows, teacher rows, chunk ids from
`anydistill.align`), the student's output head and the teacher (its head, or its log-probs
[Nt, V_t]), and returns `(sum over chunks, number of chunks used)` so the caller normalizes
across micro-batches and ranks; `term_units` gives that number from the aligned batch alone,
before any forward. The math runs in float32 on blocks of rows (chunk-level sums
in float64), differentiable w.r.t. the student's hidden states and head.

    tokens = build_cross_batch(teacher_tok, student_tok, texts, max_len=512)
    params = prepare_cross_params("mined", teacher_tok, student_tok)  # once per run
    batch = tokens.batch(student_hidden, teacher_hidden)
    total, count = cross_loss("mined", batch, student_head, teacher_head, params)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from anydistill.data.aligned import CrossBatch, CrossTokens, build_cross_batch
from anydistill.losses.cross.alm import alm_loss, binary_divergence
from anydistill.losses.cross.common import unit_counts
from anydistill.losses.cross.gold import gold_hybrid_loss
from anydistill.losses.cross.mined import mined_loss
from anydistill.losses.cross.uld import uld_loss
from anydistill.losses.cross.vocab import (
    compute_mined_map,
    mined_cache_path,
    mined_map,
    space_mask,
    vocab_intersection,
)
from anydistill.losses.engine import Head

CROSS_TERMS: dict[str, Callable[..., tuple[Tensor, int]]] = {
    "alm": alm_loss,
    "uld": uld_loss,
    "gold_hybrid": gold_hybrid_loss,
    "mined": mined_loss,
}


def _check_kind(kind: str) -> None:
    if kind not in CROSS_TERMS:
        known = ", ".join(CROSS_TERMS)
        raise ValueError(f"unknown cross-tokenizer term {kind!r}; choose one of: {known}")


def _options(kind: str) -> list[str]:
    sig = inspect.signature(CROSS_TERMS[kind])
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def cross_loss(
    kind: str,
    batch: CrossBatch,
    student_head: Head,
    teacher: Head | Tensor,
    params: Mapping[str, Any] | None = None,
) -> tuple[Tensor, int]:
    """(sum over chunks, number of chunks) of the named term; `params` are its keyword options.

    `teacher` is the teacher's `Head` (with `batch.teacher_hidden`) or its log-probs [Nt, V_t].
    """
    _check_kind(kind)
    params = dict(params or {})
    unknown = sorted(set(params) - set(_options(kind)))
    if unknown:
        raise ValueError(
            f"{kind} does not take {', '.join(unknown)}; its options: {', '.join(_options(kind))}"
        )
    return CROSS_TERMS[kind](batch, student_head, teacher, **params)


# What each term's sum runs over: every usable chunk, or the usable one-to-one chunks.
TERM_UNITS: dict[str, str] = {
    "alm": "chunks",
    "gold_hybrid": "chunks",
    "uld": "one_to_one",
    "mined": "one_to_one",
}


def term_units(kind: str, tokens: CrossTokens | CrossBatch) -> int:
    """How many units the named term's sum runs over in this batch: the `count` that
    `cross_loss(kind, ...)` returns for it, known from the chunk structure alone.

    alm and gold_hybrid sum over the usable chunks (rows on both sides, every row with a
    target); uld and mined over the usable chunks made of one teacher token and one student
    token. `tokens` is a `CrossTokens` (no forward needed) or the `CrossBatch` built from it.
    One exception: alm with `debias=True` returns the number of merged chunk groups, which
    depends on the teacher's probabilities; its units here stay the usable chunks.
    """
    _check_kind(kind)
    chunks, one_to_one = unit_counts(tokens)
    return chunks if TERM_UNITS[kind] == "chunks" else one_to_one


def prepare_cross_params(
    kind: str,
    teacher_tok: Any,
    student_tok: Any,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`options` plus the vocabulary maps the term needs, computed once per tokenizer pair.

    alm with debias: whitespace masks; gold_hybrid: the byte-identical vocabulary pairs;
    mined: the minimum-edit-distance map (cached under `cache_dir`).
    """
    _check_kind(kind)
    out = dict(options)
    if kind == "alm" and out.get("debias"):
        out.setdefault("teacher_space", space_mask(teacher_tok))
        out.setdefault("student_space", space_mask(student_tok))
    elif kind == "gold_hybrid":
        out.setdefault("matched", vocab_intersection(teacher_tok, student_tok))
    elif kind == "mined" and "mapping" not in out:
        out["mapping"] = mined_map(teacher_tok, student_tok, cache_dir)
    return out


__all__ = [
    "CROSS_TERMS",
    "TERM_UNITS",
    "CrossBatch",
    "CrossTokens",
    "binary_divergence",
    "build_cross_batch",
    "compute_mined_map",
    "cross_loss",
    "mined_cache_path",
    "mined_map",
    "prepare_cross_params",
    "space_mask",
    "term_units",
    "vocab_intersection",
]

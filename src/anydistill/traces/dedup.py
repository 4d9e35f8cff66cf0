"""Deduplicate a column of texts (prompts or traces): exact copies, then near-duplicates.

Exact: texts equal after lowercasing and collapsing whitespace. Near: datasketch MinHash over
word shingles, candidates from MinHashLSH, kept only when the estimated Jaccard similarity
reaches the threshold (LSH alone lets some below it through). The first occurrence is kept;
every later copy names the kept row it duplicates. MinHash permutations come from a fixed
seed and the shingles are hashed with SHA-1, so the same texts give the same result on every
run and machine.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Duplicate", "DedupResult", "deduplicate", "normalize_text", "shingles"]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")  # words, and each symbol alone ("2 + 3" != "2 - 3")


@dataclass(frozen=True)
class Duplicate:
    """A removed row: the kept row it repeats, and how alike they are (1.0 when exact)."""

    index: int
    kept: int
    similarity: float
    kind: Literal["exact", "near"]


@dataclass
class DedupResult:
    kept: list[int]  # indices into the input, in order
    removed: list[Duplicate]  # in input order


def normalize_text(text: str) -> str:
    """Lowercased, whitespace collapsed: what counts as the same text for exact dedup."""
    return " ".join(text.lower().split())


def shingles(text: str, size: int) -> set[str]:
    """The word ``size``-grams of the lowercased text (one shingle when it is shorter)."""
    tokens = _TOKEN_RE.findall(text.lower())
    if not tokens:
        return set()
    if len(tokens) <= size:
        return {" ".join(tokens)}
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def _exact(texts: Sequence[str]) -> tuple[list[int], list[Duplicate]]:
    first: dict[bytes, int] = {}
    kept: list[int] = []
    removed: list[Duplicate] = []
    for i, text in enumerate(texts):
        # A digest, not the text, as the key: traces can be long and there may be millions.
        key = hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=16).digest()
        if key in first:
            removed.append(Duplicate(i, first[key], 1.0, "exact"))
        else:
            first[key] = i
            kept.append(i)
    return kept, removed


def deduplicate(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_size: int = 3,
    seed: int = 1,
    near: bool = True,
) -> DedupResult:
    """Kept indices and the removed rows, each with the kept row it duplicates.

    ``threshold``: the estimated Jaccard similarity of shingle sets at which a text is a
    near-duplicate (0 < threshold <= 1). ``shingle_size``: words per shingle; 3 keeps short
    prompts that differ in one number apart (a 20-word prompt with one word changed is about
    0.6 alike) while longer texts differing in a few words still match. ``near=False``: exact
    duplicates only.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm}")
    if shingle_size < 1:
        raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
    kept, removed = _exact(texts)
    if not near or len(kept) < 2:
        return DedupResult(kept, removed)

    from datasketch import MinHash, MinHashLSH  # the optional `traces` extra

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:  # its banding needs at least two bands
        raise ValueError(
            f"threshold {threshold} is too high for MinHash LSH with num_perm {num_perm}; lower "
            "it (0.98 works with 128) or use exact dedup alone"
        ) from None
    template = MinHash(num_perm=num_perm, seed=seed)  # copies share its permutations
    sketches: dict[int, MinHash] = {}
    survivors: list[int] = []
    for i in kept:
        grams = shingles(texts[i], shingle_size)
        if not grams:  # no words: nothing to compare (exact dedup has merged these)
            survivors.append(i)
            continue
        sketch = template.copy()
        sketch.update_batch([g.encode("utf-8") for g in sorted(grams)])
        best: tuple[float, int] | None = None
        for j in lsh.query(sketch):
            similarity = float(sketch.jaccard(sketches[j]))
            # Highest similarity, then the earliest row: independent of LSH's set order.
            if similarity >= threshold and (best is None or (similarity, -j) > (best[0], -best[1])):
                best = (similarity, j)
        if best is None:
            lsh.insert(i, sketch)
            sketches[i] = sketch
            survivors.append(i)
        else:
            removed.append(Duplicate(i, best[1], best[0], "near"))
    # An exact copy of a row that near dedup removed names the row that row was kept as.
    near_of = {d.index: d for d in removed if d.kind == "near"}
    removed = [
        Duplicate(d.index, near_of[d.kept].kept, near_of[d.kept].similarity, "near")
        if d.kept in near_of
        else d
        for d in removed
    ]
    removed.sort(key=lambda d: d.index)
    return DedupResult(survivors, removed)

"""Drop rows that overlap a benchmark: any shared word n-gram (n = 8 by default, as open-r1).

Texts are lowercased and split into words (runs of letters and digits, so punctuation and
LaTeX spacing do not hide a copy: ``$x$,`` and ``x`` are the same word). A benchmark item
shorter than n words counts as one n-gram of its own length, so short questions are caught
when a row holds all of them in order. Every removed row is logged with the benchmark and
the n-gram it shares.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from anydistill.data.loading import json_lines
from anydistill.errors import DataError
from anydistill.paths import check_readable_file, decode_utf8, few

__all__ = ["Benchmark", "Contamination", "decontaminate", "load_benchmark", "word_ngrams"]

log = logging.getLogger(__name__)

_WORD_RE = re.compile(r"\w+")
TEXT_FIELDS = ("question", "problem", "prompt")  # GSM8K, MATH-500, HumanEval


@dataclass
class Benchmark:
    """A benchmark's texts (its questions), under the name the removal log uses."""

    name: str
    texts: list[str] = field(default_factory=list)


class Contamination(TypedDict):
    index: int  # the removed row
    benchmark: str
    ngram: str  # the words it shares with the benchmark
    item: int  # which of the benchmark's texts holds them


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def word_ngrams(text: str, n: int) -> list[str]:
    """The lowercased word n-grams of ``text``, in order."""
    words = _words(text)
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _read(path: Path, field_name: str) -> str:
    if path.suffix != ".gz":
        return decode_utf8(path.read_bytes(), path, field_name)
    try:
        with gzip.open(path, "rb") as fh:
            return decode_utf8(fh.read(), path, field_name)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{field_name}: {path} is not a readable gzip file ({err}); gzip it again or give "
            "the .jsonl"
        ) from None


def load_benchmark(
    path: str | Path,
    name: str | None = None,
    text_field: str | None = None,
    field_name: str = "decontaminate",
) -> Benchmark:
    """A benchmark from a .jsonl (or .jsonl.gz) file, one JSON object per line.

    Each row's text is ``text_field`` when given, else its ``question`` (GSM8K), ``problem``
    (MATH-500) or ``prompt`` (HumanEval). ``name`` defaults to the file's name, or its folder's
    when the file is a generic ``test``/``train`` (``gsm8k/test.jsonl`` -> ``gsm8k``).
    ``field_name``: the recipe field the path came from, for the error sentence.
    """
    path = check_readable_file(path, field_name, "give a benchmark .jsonl file")
    text = _read(path, field_name)
    texts: list[str] = []
    wanted = (text_field,) if text_field else TEXT_FIELDS
    rows, lines = json_lines(text, path, field_name)
    for row, lineno in zip(rows, lines, strict=True):
        column = next((c for c in wanted if isinstance(row.get(c), str)), None)
        if column is None:
            if text_field:
                raise DataError(
                    f"{field_name}: {path} line {lineno} has no text field `{text_field}` (it "
                    f"has {few(row, 6)}); name the field that holds the question"
                )
            raise DataError(
                f"{field_name}: {path} line {lineno} has no `question`, `problem` or `prompt` "
                f"field (it has {few(row, 6)}); name the field that holds the question"
            )
        texts.append(row[column])
    if not texts:
        raise DataError(f"{field_name}: {path} holds no rows; give a benchmark .jsonl file")
    stem = path.name.split(".", 1)[0]
    if name is None:
        name = path.parent.name if stem in ("test", "train", "validation", "data") else stem
    return Benchmark(name or stem, texts)


def decontaminate(
    texts: Sequence[str], benchmarks: Sequence[Benchmark], n: int = 8
) -> tuple[list[int], list[Contamination]]:
    """(kept indices, removed rows): a row is removed when it shares a word n-gram with any
    benchmark text (a benchmark text shorter than n words must appear whole)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    # {gram length: {gram: (benchmark, item)}}: the first benchmark holding a gram names it.
    lookup: dict[int, dict[str, tuple[str, int]]] = {}
    for bench in benchmarks:
        for item, text in enumerate(bench.texts):
            words = _words(text)
            size = min(n, len(words))
            if size == 0:
                continue
            table = lookup.setdefault(size, {})
            for i in range(len(words) - size + 1):
                table.setdefault(" ".join(words[i : i + size]), (bench.name, item))
    kept: list[int] = []
    removed: list[Contamination] = []
    sizes = sorted(lookup, reverse=True)  # n first: the usual case
    for index, text in enumerate(texts):
        hit = _first_hit(_words(text), sizes, lookup)
        if hit is None:
            kept.append(index)
            continue
        gram, (bench_name, item) = hit
        removed.append(Contamination(index=index, benchmark=bench_name, ngram=gram, item=item))
        log.info("row %d overlaps %s item %d: %r", index, bench_name, item, gram)
    return kept, removed


def _first_hit(
    words: list[str], sizes: list[int], lookup: dict[int, dict[str, tuple[str, int]]]
) -> tuple[str, tuple[str, int]] | None:
    for size in sizes:
        table = lookup[size]
        for i in range(len(words) - size + 1):
            gram = " ".join(words[i : i + size])
            found = table.get(gram)
            if found is not None:
                return gram, found
    return None

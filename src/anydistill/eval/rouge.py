"""ROUGE-L: longest-common-subsequence overlap between a generated and a reference text.

Used to score open-ended tasks (instruction following, summaries) where no single answer can
be extracted. Tokens are the runs of letters and digits of the lowercased text, so spacing,
punctuation and case never count (the ``rouge_score`` package tokenizes the same way, minus
its ASCII-only restriction and optional stemming). An empty prediction or reference scores
0, as in ``rouge_score``: an empty generation must not earn credit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["tokenize", "lcs_length", "rouge_l", "rouge_l_corpus"]

_TOKEN_RE = re.compile(r"[^\W_]+")  # letters and digits (any script); "_" is punctuation


def tokenize(text: str) -> list[str]:
    """Lowercased letter/digit runs: "Hello, World!" -> ["hello", "world"]."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, by dynamic programming in O(len(a)*len(b))
    time and O(min) memory: only the previous and the current row are kept."""
    if len(a) < len(b):
        a, b = b, a  # the rows run over the shorter sequence
    if not b:
        return 0
    previous = [0] * (len(b) + 1)
    current = [0] * (len(b) + 1)
    for x in a:
        for j, y in enumerate(b, start=1):
            if x == y:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous, current = current, previous
    return previous[len(b)]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision (LCS / prediction tokens), recall (LCS / reference tokens) and F1."""
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = lcs / len(pred), lcs / len(ref)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
    }


def rouge_l_corpus(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over aligned prediction/reference pairs (each pair weighs the same)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} references: they must align"
        )
    if not references:
        raise ValueError("no predictions to score")
    total = sum(rouge_l(p, r)["f1"] for p, r in zip(predictions, references, strict=True))
    return total / len(references)

"""ROUGE-L against hand-computed scores, edge cases and a brute-force LCS."""

from __future__ import annotations

import itertools
import random

import pytest

from anydistill.eval.rouge import lcs_length, rouge_l, rouge_l_corpus, tokenize

ZERO = {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_tokenize_lowercases_and_splits_on_punctuation() -> None:
    assert tokenize("Hello, WORLD!  It's 3.5 o'clock") == [
        "hello",
        "world",
        "it",
        "s",
        "3",
        "5",
        "o",
        "clock",
    ]
    assert tokenize("snake_case\tand\nnew-lines") == ["snake", "case", "and", "new", "lines"]
    assert tokenize("Café au lait") == ["café", "au", "lait"]
    assert tokenize("") == [] and tokenize(" ?! ") == []


@pytest.mark.parametrize(
    ("prediction", "reference", "lcs", "n_pred", "n_ref"),
    [
        # the cat _ on the mat: one substitution
        ("the cat sat on the mat", "the cat is on the mat", 5, 6, 6),
        # a prefix: precision 1, recall 2/6
        ("The cat.", "the cat sat on the mat", 2, 2, 6),
        # scrambled order: "the on the" / "the sat the" are the longest in-order runs
        ("mat the on sat cat the", "the cat sat on the mat", 3, 6, 6),
        # case and punctuation never count
        ("Hello, WORLD!", "hello world", 2, 2, 2),
        # a subsequence need not be contiguous
        ("a x b y c", "a b c", 3, 5, 3),
        ("Café", "café au lait", 1, 1, 3),
    ],
)
def test_rouge_l_hand_computed(
    prediction: str, reference: str, lcs: int, n_pred: int, n_ref: int
) -> None:
    precision, recall = lcs / n_pred, lcs / n_ref
    f1 = 2 * precision * recall / (precision + recall)
    got = rouge_l(prediction, reference)
    assert got == pytest.approx({"precision": precision, "recall": recall, "f1": f1})


def test_rouge_l_known_values() -> None:
    assert rouge_l("the cat sat on the mat", "the cat is on the mat")["f1"] == pytest.approx(5 / 6)
    assert rouge_l("The cat.", "the cat sat on the mat")["f1"] == pytest.approx(0.5)
    assert rouge_l("mat the on sat cat the", "the cat sat on the mat")["f1"] == pytest.approx(0.5)
    assert rouge_l("Hello, WORLD!", "hello world") == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [("", "the cat"), ("the cat", ""), ("", ""), ("!!!", "a"), ("a b", "c d"), ("  ", "  ")],
)
def test_rouge_l_empty_and_disjoint_score_zero(prediction: str, reference: str) -> None:
    assert rouge_l(prediction, reference) == ZERO


def _brute_lcs(a: list[str], b: list[str]) -> int:
    """Longest subsequence of `a` that is also a subsequence of `b`, by enumeration."""

    def is_subsequence(seq: tuple[str, ...], of: list[str]) -> bool:
        it = iter(of)
        return all(x in it for x in seq)

    for size in range(min(len(a), len(b)), 0, -1):
        if any(is_subsequence(c, b) for c in itertools.combinations(a, size)):
            return size
    return 0


def test_lcs_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 8))]
        assert lcs_length(a, b) == lcs_length(b, a) == _brute_lcs(a, b), (a, b)


def test_lcs_long_inputs_are_fast() -> None:
    a = ["w"] * 2000
    assert lcs_length(a, a) == 2000
    assert lcs_length(list("ab" * 500), list("ba" * 500)) == 999


def test_rouge_l_corpus_is_mean_f1() -> None:
    preds = ["the cat sat on the mat", "The cat.", ""]
    refs = ["the cat sat on the mat", "the cat sat on the mat", "anything"]
    assert rouge_l_corpus(preds, refs) == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert rouge_l_corpus(["a"], ["a"]) == 1.0


def test_rouge_l_corpus_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="align"):
        rouge_l_corpus(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        rouge_l_corpus([], [])

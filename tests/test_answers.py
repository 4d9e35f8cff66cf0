"""Answer extraction and matching for exact-match scoring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anydistill.eval.answers import (
    answers_match,
    extract_answer,
    normalize_expression,
    normalize_number,
)

# (generated solution, reference answer): extract_answer(solution) must match the reference.
EXTRACTION_TABLE = [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("Total is 1000 + 234 = 1234.\n#### 1,234", "1234"),
    ("#### 1,234\n", "1,234"),
    ("#### $18.00", "18"),
    ("Costs 10 dollars.\n#### 10 dollars", "10"),
    ("#### -5", "-5"),
    ("#### 9\nQuestion: Ann has 3 apples. ...", "9"),
    ("Half of it: $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("So the answer is $\\boxed{\\dfrac{1}{2}}$.", "1/2"),
    ("Thus $x = \\boxed{0.5}$", "\\frac12"),
    ("We get \\boxed{\\frac{\\sqrt{3}}{2}}.", "\\frac{\\sqrt{3}}{2}"),
    ("First \\boxed{3}, corrected: \\boxed{4}", "4"),
    ("Angle is \\boxed{30^\\circ}.", "30"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("\\boxed{\\text{(B)}}", "(B)"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left(3,\\frac{\\pi}{2}\\right)"),
    ("Width \\boxed{5\\text{ cm}}", "5"),
    ("The answer is 42.", "42"),
    ("Adding up, the answer is: 3.5 cups. Done.", "3.5"),
    ("The answer is $18.00.", "18"),
    ("So the final answer is **-12**.", "-12"),
    ("The answer is 3/4", "0.75"),
    ("He ends with 7 + 5 = 12 marbles, then 12 - 3 = 9", "9"),
    ("The temperature dropped to -4 degrees.", "-4"),
    ("It costs $1,000.50 in total.", "1000.5"),
    ("The ratio is 2.50", "2.5"),
    ("50% of them, so 25 people", "25"),
]


@pytest.mark.parametrize(("solution", "reference"), EXTRACTION_TABLE)
def test_extract_and_match_table(solution: str, reference: str) -> None:
    pred = extract_answer(solution)
    assert answers_match(pred, reference), (solution, pred, reference)


def test_extraction_preference_order() -> None:
    text = "The answer is 3. \\boxed{4} and 5\n#### 6\nextra 7"
    assert extract_answer(text) == "6"
    assert extract_answer("The answer is 3. then \\boxed{4} and 5") == "4"
    assert extract_answer("The answer is 3. then 5") == "3"
    assert extract_answer("only 5 and 8 here") == "8"


def test_extract_none_and_edge_cases() -> None:
    assert extract_answer("") is None
    assert extract_answer("no numbers here") is None
    assert extract_answer("####   \nbut 5 later") == "5"  # empty final line falls back
    assert extract_answer("cut off \\boxed{\\frac{1}{2") == "2"  # unbalanced box ignored
    assert extract_answer("version v2 has 3 items") == "3"  # digits inside words are not numbers


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", "7"),
        ("7.0", "7"),
        ("7.00", "7"),
        ("7.50", "7.5"),
        ("$18.00", "18"),
        ("1,000", "1000"),
        ("1,234,567", "1234567"),
        ("-5", "-5"),
        ("-0.50", "-0.5"),
        (".5", "0.5"),
        ("+3", "3"),
        ("3/4", "3/4"),
        ("-3/4", "-3/4"),
        ("\\frac{3}{4}", "3/4"),
        ("-\\dfrac{1}{2}", "-1/2"),
        ("42.", "42"),
        ("18 dollars", "18"),
        ("18 dollars.", "18"),
        ("50%", "50"),
        ("\\$5", "5"),
        ("007", "7"),
        ("\u22124", "-4"),
    ],
)
def test_normalize_number(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "", "x+1", "2x", "1,2", "3/0", "\\sqrt{2}", "-", "(1,2)"])
def test_normalize_number_rejects_non_numbers(raw: str) -> None:
    assert normalize_number(raw) is None


def test_answers_match_numeric_and_string() -> None:
    assert answers_match("0.5", "1/2")
    assert answers_match("\\frac{1}{2}", "0.5")
    assert answers_match("1,000", "1000.000")
    assert answers_match("0.3333333", "1/3")
    assert not answers_match("0.33", "1/3")
    assert not answers_match("8", "9")
    assert not answers_match(None, "9")
    assert not answers_match("", "9")
    assert answers_match("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}") is False  # not equal LaTeX
    assert answers_match("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}")
    assert answers_match("\\text{Evelyn}", "Evelyn")
    assert answers_match("90^\\circ", "90")
    assert answers_match("\\left[ 1, 2 \\right]", "[1,2]")
    assert answers_match("x\\!+\\,1", "x+1")
    assert not answers_match("2x", "2")  # a variable is not a unit


def test_normalize_expression() -> None:
    assert normalize_expression("\\left( 3, \\dfrac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_expression("\\text{(C)}") == "(C)"
    assert normalize_expression("$x^2 + 1$") == "x^2+1"


def test_demo_corpus_answers_extract() -> None:
    from anydistill.demo.corpus import arithmetic_problems

    for record in arithmetic_problems(200, seed=3, difficulty="medium"):
        assert extract_answer(record["completion"]) == record["answer"]
        assert answers_match(extract_answer(record["text"]), record["answer"])


def _shared_data() -> Path:
    env = os.environ.get("ANYDISTILL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def test_gsm8k_reference_solutions_recover_their_answers() -> None:
    folder = _shared_data() / "gsm8k"
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        pytest.skip(
            f"GSM8K data not found at {folder} (set ANYDISTILL_SHARED_DATA to the folder "
            "holding gsm8k/)"
        )
    count = 0
    for path in files:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                solution = record["answer"]
                reference = solution.rsplit("####", 1)[1].strip()
                pred = extract_answer(solution)
                assert answers_match(pred, reference), (path.name, pred, reference)
                # The reference itself must read as a plain integer after normalization.
                assert normalize_number(reference) == str(int(reference.replace(",", "")))
                count += 1
    assert count > 1000

"""The demo's synthetic arithmetic corpus: deterministic, disjoint splits, correct answers."""

from __future__ import annotations

import re

import pytest

from anydistill.data.synthetic import (
    DIFFICULTIES,
    arithmetic_problems,
    corpus_text,
    split_problems,
)
from anydistill.eval.answers import extract_answer

_STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _check_record(record: dict) -> int:
    """Recompute every worked step; return how many operations the solution uses."""
    assert set(record) == {"prompt", "completion", "answer", "text"}
    assert record["text"] == record["prompt"] + record["completion"]
    assert record["prompt"].startswith("Question: ")
    assert record["prompt"].endswith("\nAnswer:")
    assert record["completion"].startswith(" ")
    assert record["completion"].endswith(f" #### {record['answer']}\n")
    assert record["text"].isascii()
    steps = _STEP.findall(record["completion"])
    assert 1 <= len(steps) <= 3, record["completion"]
    # Operands come from the question or from an earlier step's result, never from nowhere.
    known = {int(x) for x in re.findall(r"\d+", record["prompt"])}
    result = None
    for a, op, b, c in steps:
        a, b, c = int(a), int(b), int(c)
        assert a in known and b in known, (record["text"], a, b)
        assert _OPS[op](a, b) == c, record["completion"]
        assert c >= 0
        known.add(c)
        result = c
    assert str(result) == record["answer"]
    assert extract_answer(record["completion"]) == record["answer"]
    return len(steps)


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTIES))
def test_answers_are_correct(difficulty: str) -> None:
    records = arithmetic_problems(400, seed=11, difficulty=difficulty)
    assert len(records) == 400
    op_counts = {_check_record(r) for r in records}
    assert op_counts == {1, 2, 3} if difficulty != "hard" else op_counts == {2, 3}


def test_deterministic_and_seed_sensitive() -> None:
    assert arithmetic_problems(50, seed=5) == arithmetic_problems(50, seed=5)
    assert arithmetic_problems(50, seed=5) != arithmetic_problems(50, seed=6)
    # A prefix does not depend on how many were asked for.
    assert arithmetic_problems(20, seed=5) == arithmetic_problems(50, seed=5)[:20]


def test_no_duplicate_prompts() -> None:
    records = arithmetic_problems(3000, seed=0)
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts)


def test_variety_of_templates_and_operators() -> None:
    records = arithmetic_problems(500, seed=2)
    completions = " ".join(r["completion"] for r in records)
    for op in (" + ", " - ", " * "):
        assert op in completions
    questions = " ".join(r["prompt"] for r in records)
    for phrase in ("have now?", "together?", "in all?", "change", "every day", "in each"):
        assert phrase in questions, phrase
    assert len({r["prompt"].split()[1] for r in records}) >= 10  # many names


def test_easy_numbers_are_small() -> None:
    records = arithmetic_problems(1000, seed=4, difficulty="easy")
    numbers = [int(x) for r in records for x in re.findall(r"\d+", r["prompt"])]
    small = sum(1 for x in numbers if x < 50)
    assert small / len(numbers) > 0.9


def test_split_has_no_overlap_and_stable_eval() -> None:
    train, evals = split_problems(500, 100, seed=7)
    assert len(train) == 500 and len(evals) == 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    _, evals_again = split_problems(50, 100, seed=7)
    assert evals_again == evals  # growing the training set keeps the eval set


def test_corpus_text_joins_records() -> None:
    records = arithmetic_problems(5, seed=1)
    text = corpus_text(records)
    assert text == "".join(r["text"] for r in records)
    assert text.count("####") == 5
    assert corpus_text([{"text": "no newline"}]) == "no newline\n"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        arithmetic_problems(3, seed=0, difficulty="impossible")
    with pytest.raises(ValueError, match="n must be"):
        arithmetic_problems(-1, seed=0)
    assert arithmetic_problems(0, seed=0) == []

"""Decontamination: rows sharing a word n-gram with a benchmark are removed and logged."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from anydistill.errors import DataError
from anydistill.traces.decontam import Benchmark, decontaminate, load_benchmark, word_ngrams

GSM8K_Q = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four."
)
MATH_Q = "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates."
HUMANEVAL_P = (
    'def has_close_elements(numbers, threshold):\n    """ Check if in given list of numbers'
)


def _jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def benchmarks(tmp_path: Path) -> list[Benchmark]:
    gsm8k = _jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": GSM8K_Q, "answer": "#### 18"}])
    math = _jsonl(tmp_path / "math500.jsonl", [{"problem": "Compute 1+1."}, {"problem": MATH_Q}])
    human = _jsonl(
        tmp_path / "HumanEval.jsonl.gz",
        [{"task_id": "HumanEval/0", "prompt": HUMANEVAL_P}],
        gz=True,
    )
    return [load_benchmark(gsm8k), load_benchmark(math), load_benchmark(human)]


def test_benchmarks_load_their_question_field_and_name(benchmarks: list[Benchmark]):
    assert [b.name for b in benchmarks] == ["gsm8k", "math500", "HumanEval"]
    assert benchmarks[0].texts == [GSM8K_Q]
    assert benchmarks[1].texts == ["Compute 1+1.", MATH_Q]
    assert benchmarks[2].texts == [HUMANEVAL_P]


def test_planted_items_are_removed_with_their_ngram_and_clean_rows_kept(
    benchmarks: list[Benchmark], caplog: pytest.LogCaptureFixture
):
    rows = [
        "A farmer has 12 cows and buys 5 more. How many cows does he have now?",
        "Rewritten: JANET'S ducks lay 16 eggs per day!  She eats three for breakfast.",
        "Please convert the point (0, 3) in rectangular coordinates to polar form.",
        "Write has_close_elements(numbers, threshold): check if in given list of numbers...",
        "Explain why the sky is blue in two sentences.",
        "Hint: compute 1 + 1 first.",  # a benchmark item shorter than n words, whole
    ]
    with caplog.at_level(logging.INFO, logger="anydistill.traces.decontam"):
        kept, removed = decontaminate(rows, benchmarks)
    assert kept == [0, 4]
    found = {r["index"]: (r["benchmark"], r["ngram"], r["item"]) for r in removed}
    assert found == {
        1: ("gsm8k", "janet s ducks lay 16 eggs per day", 0),
        2: ("math500", "convert the point 0 3 in rectangular coordinates", 1),
        3: ("HumanEval", "has_close_elements numbers threshold check if in given list", 0),
        5: ("math500", "compute 1 1", 0),
    }
    logged = caplog.text
    for benchmark, ngram, _ in found.values():
        assert benchmark in logged and ngram in logged


def test_n_is_configurable():
    bench = [Benchmark("b", ["one two three four five six seven eight nine"])]
    row = ["x one two three four y"]
    assert decontaminate(row, bench)[0] == [0]
    kept, removed = decontaminate(row, bench, n=4)
    assert kept == [] and removed[0]["ngram"] == "one two three four"
    assert word_ngrams("A b, C!", 2) == ["a b", "b c"]


def test_a_missing_question_field_is_one_sentence(tmp_path: Path):
    path = _jsonl(tmp_path / "bench.jsonl", [{"question": "q"}, {"text": "t", "id": 1}])
    with pytest.raises(DataError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert "line 2" in message and "`question`, `problem` or `prompt`" in message
    assert "id, text" in message and "\n" not in message
    with pytest.raises(DataError, match="no text field `body`"):
        load_benchmark(path, text_field="body")
    named = load_benchmark(_jsonl(tmp_path / "t.jsonl", [{"text": "t"}]), "mine", "text")
    assert (named.name, named.texts) == ("mine", ["t"])
    with pytest.raises(DataError, match="does not exist"):
        load_benchmark(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        load_benchmark(tmp_path / "bad.jsonl")

"""Task detection, loaders for the shared evaluation sets, and scoring by task kind."""

from __future__ import annotations

import gzip
import json
import os
from fractions import Fraction
from pathlib import Path

import pytest

from anydistill.errors import DataError
from anydistill.eval.tasks import (
    arithmetic_value,
    detect_task,
    load_task_records,
    reference_answer,
    reference_text,
    score_task,
)


def _shared_data() -> Path:
    env = os.environ.get("ANYDISTILL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def _shared(name: str) -> list[dict]:
    folder = _shared_data() / name
    if not folder.is_dir():
        pytest.skip(
            f"{name} data not found at {folder} (set ANYDISTILL_SHARED_DATA to the folder "
            f"holding {name}/)"
        )
    return load_task_records(folder)


# --- detection and references ---------------------------------------------------------------


def test_detect_task_by_columns() -> None:
    code = {"prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}
    assert detect_task([code]) == "pass_at_1"
    assert detect_task([{"question": "1+1?", "answer": "#### 2"}]) == "exact_match"
    assert detect_task([{"prompt": "hi", "response": "hello"}]) == "rouge_l"
    assert detect_task([{"instruction": "hi", "output": "hello"}]) == "rouge_l"
    assert detect_task([{"prompt": "hi", "completion": "hello"}]) == "rouge_l"
    # A column only some records have does not decide the kind.
    assert detect_task([{"answer": "1", "output": "x"}, {"output": "y"}]) == "rouge_l"


def test_detect_task_errors_name_the_fix() -> None:
    with pytest.raises(DataError, match="empty"):
        detect_task([])
    with pytest.raises(DataError, match="'answer'"):
        detect_task([{"prompt": "hi", "text": "no reference"}])


def test_reference_answer_forms() -> None:
    assert reference_answer({"answer": "She pays 2 * 9 = 18.\n#### 18"}) == "18"
    assert reference_answer({"answer": "#### 1,234\nextra"}) == "1,234"
    assert reference_answer({"answer": " \\frac{1}{2} "}) == "\\frac{1}{2}"
    assert reference_answer({"answer": 51.0}) == "51"
    assert reference_answer({"answer": 0.5}) == "0.5"
    assert reference_answer({"answer": 7}) == "7"
    assert reference_text({"output": "b", "response": "a"}) == "a"
    with pytest.raises(DataError):
        reference_text({"prompt": "x"})


# --- scoring --------------------------------------------------------------------------------


def test_score_exact_match_results() -> None:
    records = [
        {"id": "a", "answer": "Total: 3 + 4 = 7\n#### 7"},
        {"id": "b", "answer": "\\frac{1}{2}"},
        {"id": "c", "answer": "(1, 2)"},
    ]
    completions = ["So 7 apples.\n#### 7", "The answer is $0.5$.", "\\boxed{(2, 1)}"]
    result = score_task("exact_match", records, completions)
    assert result["kind"] == "exact_match" and result["n"] == 3
    assert result["score"] == pytest.approx(2 / 3)
    assert [r["correct"] for r in result["results"]] == [True, True, False]
    assert result["results"][1] == {
        "prediction": "0.5",
        "reference": "\\frac{1}{2}",
        "correct": True,
        "id": "b",
    }


def test_score_rouge_l() -> None:
    records = [{"prompt": "p", "response": "the cat sat on the mat"}, {"output": "a b"}]
    result = score_task("rouge_l", records, ["The cat sat on the mat.", "c d"])
    assert result["score"] == pytest.approx(0.5)
    assert result["results"][0]["f1"] == pytest.approx(1.0)
    assert [r["id"] for r in result["results"]] == [0, 1]


def test_score_task_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown task kind"):
        score_task("bleu", [{"answer": "1"}], ["1"])
    with pytest.raises(ValueError, match="align"):
        score_task("exact_match", [{"answer": "1"}], ["1", "2"])
    with pytest.raises(DataError):
        score_task("exact_match", [], [])


def test_pass_at_1_small_program() -> None:
    record = {
        "task_id": "toy/0",
        "prompt": "def add(a, b):\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    good = score_task("pass_at_1", [record], ["    return a + b\n"], workers=1)
    assert good["score"] == 1.0 and good["results"][0]["status"] == "passed"
    bad = score_task("pass_at_1", [record, record], ["    return a - b\n", "    return (\n"])
    assert bad["score"] == 0.0
    assert [r["status"] for r in bad["results"]] == ["failed", "error"]
    assert bad["results"][0]["id"] == "toy/0"


# --- arithmetic for SVAMP -------------------------------------------------------------------


def test_arithmetic_value() -> None:
    assert arithmetic_value("( 76.0 - 25.0 )") == 51
    assert arithmetic_value("( ( 4.0 - 2.0 ) + 3.0 )") == 5
    assert arithmetic_value("7 / 2") == Fraction(7, 2)
    assert arithmetic_value("-( 1.5 * 2 )") == -3
    for bad in ("__import__('os')", "2 ** 3", "x + 1", "1 / 0", "(", "[1]"):
        with pytest.raises(ValueError):
            arithmetic_value(bad)


# --- loaders --------------------------------------------------------------------------------


def test_load_generic_formats(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    records = load_task_records(tmp_path / "a.jsonl")
    assert records[0]["prompt"] == "Say hi\n\nto Bob"
    assert records[0]["reference"] == "Hi Bob"
    assert detect_task(records) == "rouge_l"

    (tmp_path / "b.json").write_text(json.dumps({"data": [{"prompt": "1+1", "answer": 2}]}))
    records = load_task_records(tmp_path / "b.json")
    assert records == [{"prompt": "1+1", "answer": 2, "reference": "2"}]
    assert score_task(detect_task(records), records, ["#### 2"])["score"] == 1.0

    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"question": "q?", "answer": "work\n#### 3"}) + "\n")
    folder = tmp_path / "only"
    folder.mkdir()
    (folder / "c.jsonl.gz").write_bytes((tmp_path / "c.jsonl.gz").read_bytes())
    records = load_task_records(folder)  # a folder with one data file
    assert records[0]["answer"] == "3" and records[0]["solution"] == "work\n#### 3"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task_records(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no records"):
        load_task_records(tmp_path / "empty.jsonl")
    (tmp_path / "x.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="JSON object"):
        load_task_records(tmp_path / "x.json")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="found 0"):
        load_task_records(tmp_path / "nothing")


# --- the shared evaluation sets -------------------------------------------------------------


def test_gsm8k_solutions_score_one_and_wrong_answers_zero() -> None:
    records = _shared("gsm8k")
    assert len(records) == 1319  # the folder's test split
    first = records[0]
    assert first["prompt"].startswith("Janet") and first["answer"] == "18"
    assert detect_task(records) == "exact_match"
    right = score_task("exact_match", records, [r["solution"] for r in records])
    assert right["score"] == 1.0
    wrong = [f"The answer is {int(r['answer'].replace(',', '')) + 1}." for r in records]
    assert score_task("exact_match", records, wrong)["score"] == 0.0
    # Raw records (answer = the worked solution) score the same.
    raw = [{"answer": r["solution"]} for r in records[:50]]
    assert score_task("exact_match", raw, [r["solution"] for r in records[:50]])["score"] == 1.0


def test_math500_solutions_score_at_least_99_percent() -> None:
    records = _shared("math500")
    assert len(records) == 500 and records[0]["prompt"].startswith("Convert the point")
    assert detect_task(records) == "exact_match"
    result = score_task("exact_match", records, [r["solution"] for r in records])
    assert result["score"] >= 0.99
    wrong = score_task("exact_match", records[:100], ["\\boxed{\\text{no idea}}"] * 100)
    assert wrong["score"] == 0.0


def test_svamp_solutions_score_one() -> None:
    records = _shared("svamp")
    assert len(records) == 1000 and detect_task(records) == "exact_match"
    assert records[0]["prompt"] == (
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each "
        "pack. How much do you have to pay to buy each pack?"
    )
    assert records[0]["answer"] == "51" and records[0]["solution"] == "( 76.0 - 25.0 ) = 51"
    assert score_task("exact_match", records, [r["solution"] for r in records])["score"] == 1.0
    # The equations evaluate to the stored answers, except one erratum upstream:
    # chal-680 is (4 - 2) + 3 = 5 but stores 1.
    disagree = {
        r["id"] for r in records if arithmetic_value(r["equation"]) != Fraction(r["answer"])
    }
    assert disagree == {"chal-680"}


def test_humaneval_canonical_solutions_pass() -> None:
    records = _shared("humaneval")[:20]
    assert detect_task(records) == "pass_at_1"
    assert records[0]["task_id"] == "HumanEval/0"
    result = score_task("pass_at_1", records, [r["canonical_solution"] for r in records])
    failures = [
        (r["id"], r["status"], r["stderr_tail"]) for r in result["results"] if not r["passed"]
    ]
    assert result["score"] == 1.0, failures
    wrong = score_task("pass_at_1", records[:4], ["    raise NotImplementedError\n"] * 4)
    assert wrong["score"] == 0.0
    assert {r["status"] for r in wrong["results"]} == {"error"}

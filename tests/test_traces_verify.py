"""Trace verification: math answers via math-verify, code via the sandbox, and the dispatch."""

from __future__ import annotations

import gzip
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from anydistill.traces.verify import (  # noqa: E402
    extract_code,
    verify_code,
    verify_math,
    verify_trace,
)


def _shared_data() -> Path:
    env = os.environ.get("ANYDISTILL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


# --- math ----------------------------------------------------------------------------------

RIGHT = [
    ("So the answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),
    ("So the answer is $\\boxed{0.5}$.", "\\frac{1}{2}"),
    ("Thus $\\boxed{\\dfrac{3}{4}}$", "\\frac{3}{4}"),
    ("Thus $\\boxed{\\frac34}$", "\\dfrac{3}{4}"),
    ("She keeps 16 - 3 - 4 = 9 eggs.\n#### 18", "18"),
    ("She makes 9 * 2 = 18 dollars, so \\boxed{18}.", "Janet sells 9 eggs.\n#### 18"),
    ("In total 1000 + 234.\n#### 1,234", "1234"),
    ("#### $18.00", "18"),
    ("The answer is 42.", "42"),
    ("<think>Maybe \\boxed{3}? No, recount.</think>\nThe count is \\boxed{4}.", "4"),
    ("We get $\\boxed{2\\sqrt{5}}$.", "\\sqrt{20}"),
    ("Final answer: $\\boxed{(1, 2)}$", "(1,2)"),
]
WRONG = [
    ("So the answer is $\\boxed{3}$.", "4"),
    ("So the answer is $\\boxed{\\frac{1}{3}}$.", "0.5"),
    ("#### 17", "Janet sells 9 eggs.\n#### 18"),
    ("<think>It is \\boxed{4}.</think>\nNo: \\boxed{5}.", "4"),  # the answer after thinking
    ("We add them up and get 42 in the end", "42"),  # never states an answer
    ("", "1"),
]


@pytest.mark.parametrize(("completion", "reference"), RIGHT)
def test_verify_math_accepts_the_right_answer_in_any_form(completion: str, reference: str):
    assert verify_math(completion, reference)


@pytest.mark.parametrize(("completion", "reference"), WRONG)
def test_verify_math_rejects_a_wrong_or_missing_answer(completion: str, reference: str):
    assert not verify_math(completion, reference)


def test_hostile_answers_are_fast_and_false_in_worker_threads():
    """math-verify's SIGALRM timeout cannot run off the main thread: our bound must hold."""
    hostile = ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{(10^{10^{10}})!}", "\\boxed{" + "2" * 5000 + "}"]
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda c: verify_math(c, "1"), hostile))
        right = pool.submit(verify_math, "\\boxed{\\frac{1}{2}}", "0.5").result()
    assert verdicts == [False, False, False]
    assert right
    assert time.perf_counter() - start < 10


# --- code ----------------------------------------------------------------------------------

HUMANEVAL = {
    "task_id": "Toy/0",
    "prompt": "from typing import List\n\n\ndef total(xs: List[int]) -> int:\n"
    '    """Sum of xs."""\n',
    "entry_point": "total",
    "test": "def check(candidate):\n    assert candidate([1, 2, 3]) == 6\n"
    "    assert candidate([]) == 0\n",
}
GOOD = (
    "<think>A loop works, but sum() is simpler.</think>\n"
    "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```\n"
)
BAD = "Here it is:\n```python\ndef total(xs):\n    return len(xs)\n```"


def test_code_that_passes_its_tests_is_accepted_and_a_failing_one_rejected():
    tests, entry = HUMANEVAL["test"], HUMANEVAL["entry_point"]
    assert verify_code(GOOD, tests, entry, 10, prompt=HUMANEVAL["prompt"])  # needs its List
    assert not verify_code(BAD, tests, entry, 10)
    assert verify_trace(HUMANEVAL, GOOD) == "correct"
    assert verify_trace(HUMANEVAL, BAD) == "incorrect"
    assert verify_trace(HUMANEVAL, "no code at all, just `sum(xs)`") == "incorrect"


def test_a_body_only_completion_continues_the_prompt():
    body = "```python\n    return sum(xs)\n```"
    assert verify_trace(HUMANEVAL, body) == "correct"


def test_asserts_as_tests_and_timeouts():
    asserts = ["assert double(2) == 4", "assert double(-1) == -2"]
    record = {"prompt": "Write double(x).", "test_list": asserts}
    assert verify_trace(record, "```py\ndef double(x):\n    return 2 * x\n```") == "correct"
    assert verify_trace(record, "```python\ndef double(x):\n    return x + 2\n```") == "incorrect"
    loop = "```python\ndef double(x):\n    while True:\n        pass\n```"
    assert not verify_code(loop, "\n".join(asserts), None, timeout=1)


def test_extract_code_prefers_the_last_python_block():
    text = "```python\nfirst()\n```\n```\n$ python run.py\n```\n```python\nlast()\n```\n"
    assert extract_code(text) == "last()\n"
    assert extract_code("```\nbare()\n```") == "bare()\n"
    assert extract_code("```bash\nls\n```") is None
    assert extract_code("no fences") is None


# --- dispatch --------------------------------------------------------------------------------


def test_verify_trace_dispatches_on_what_the_record_holds():
    assert verify_trace({"question": "q", "answer": "7"}, "So \\boxed{7}.") == "correct"
    assert verify_trace({"question": "q", "answer": 7.0}, "So \\boxed{7}.") == "correct"
    assert verify_trace({"question": "q", "answer": "x\n#### 7"}, "#### 8") == "incorrect"
    math = {"problem": "p", "solution": "Hence $\\boxed{\\frac{1}{2}}$."}
    assert verify_trace(math, "\\boxed{0.5}") == "correct"
    assert verify_trace({"prompt": "Write a poem."}, "Roses...") == "unverified"
    assert verify_trace({"prompt": "p", "answer": ""}, "\\boxed{1}") == "unverified"


def test_shared_references_are_recovered():
    """Every GSM8K and MATH-500 reference solution, as a trace, verifies as correct."""
    root = _shared_data()
    gsm8k, math500 = root / "gsm8k" / "test.jsonl", root / "math500" / "test.jsonl"
    if not (gsm8k.is_file() and math500.is_file()):
        pytest.skip(f"shared data not found at {root} (set ANYDISTILL_SHARED_DATA)")
    rows = [json.loads(line) for line in gsm8k.read_text().splitlines() if line.strip()]
    assert len(rows) == 1319
    wrong = [r["answer"] for r in rows if verify_trace(r, r["answer"]) != "correct"]
    assert not wrong, wrong[:3]
    rows = [json.loads(line) for line in math500.read_text().splitlines() if line.strip()]
    assert len(rows) == 500
    wrong = [r["unique_id"] for r in rows if verify_trace(r, r["solution"]) != "correct"]
    assert not wrong, wrong[:3]


def test_humaneval_canonical_solutions_pass():
    path = _shared_data() / "humaneval" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"HumanEval not found at {path} (set ANYDISTILL_SHARED_DATA)")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert len(records) == 164
    cases = []
    for r in records[:6] + [records[38]]:
        body = f"```python\n{r['canonical_solution']}```"  # continues the prompt
        # The function restated alone: imports and helpers (38's encode_cyclic) come from
        # the prompt.
        own = r["prompt"][r["prompt"].index(f"def {r['entry_point']}(") :]
        restated = f"Here:\n```python\n{own}{r['canonical_solution']}```"
        cases += [(r, body), (r, restated)]
    with ThreadPoolExecutor(2) as pool:  # the sandbox runs from threads
        verdicts = list(pool.map(lambda c: verify_trace(*c), cases))
    assert verdicts == ["correct"] * len(cases)
    broken = f"```python\n{records[0]['canonical_solution'].replace('<', '>')}```"
    assert verify_trace(records[0], broken) == "incorrect"

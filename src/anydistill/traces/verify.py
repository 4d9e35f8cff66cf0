"""Is a sampled trace right? Math answers are checked the way open-r1 checks them (math-verify),
code by running the problem's tests in the sandbox of `anydistill.eval.sandbox`.

`verify_trace` picks the check from what the record holds: tests (``test`` / ``tests`` /
``test_list``) -> run them; a reference answer (``answer``, else a ``solution`` with a
``\\boxed`` answer) -> compare final answers; neither -> ``"unverified"``.

math-verify bounds its parsing and comparison with SIGALRM, which only works in the main
thread. Elsewhere it runs without that timeout, so a parsed answer whose evaluation could stall
(``9^{9^{9^9}}``) is rejected before comparison; call from the main thread (or from processes)
to keep math-verify's own timeouts as well.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

from anydistill.eval.answers import normalize_number, too_large_to_evaluate
from anydistill.eval.sandbox import run_program
from anydistill.eval.tasks import reference_answer

__all__ = ["Verdict", "verify_math", "verify_code", "verify_trace", "extract_code"]

Verdict = Literal["correct", "incorrect", "unverified"]

_TIMEOUT_S = 5  # math-verify's per-call budget (whole seconds: it uses signal.alarm)
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("python", "python3", "py")


def _no_timeout_warning(record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


@lru_cache(maxsize=1)
def _configs() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(reference, completion) extraction configs; imported late: math-verify is an extra."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    # Off the main thread we bound evaluation ourselves (`_bounded`); math-verify would warn
    # that its own timeout is off.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_no_timeout_warning)

    # The reference is trusted: take whatever it holds. The completion must state its answer
    # (boxed first, as open-r1; else after "answer"/"final answer"): a stray last number in a
    # long trace is not an answer, and a trace that never states one is not kept.
    gold = (LatexExtractionConfig(), ExprExtractionConfig())
    pred = (
        LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False),
        ExprExtractionConfig(try_extract_without_anchor=False),
    )
    return gold, pred


def _final_line(text: str) -> str:
    """The rest of the line after the last ``####`` (GSM8K's final answer)."""
    return text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()


def _reference_text(reference: str) -> str:
    """The reference as text math-verify reads: a worked solution keeps its ``\\boxed``
    answer, GSM8K's ``... #### 42`` becomes ``42``, a bare answer is boxed."""
    if "####" in reference and _final_line(reference):
        reference = _final_line(reference)
    if "\\boxed" in reference or "\\fbox" in reference:
        return reference
    return "\\boxed{" + reference.strip().strip("$").strip() + "}"


def _completion_text(completion: str) -> str:
    """The part of a completion that holds its final answer.

    After the last ``</think>`` when there is one (the thinking may try several answers); a
    GSM8K-style ``#### 42`` line is boxed at the end so it wins, as in `extract_answer`.
    """
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    if "####" in completion and _final_line(completion):
        tail = _final_line(completion)
        # "18 dollars", "$1,234.00": our number reader drops what math-verify would misread.
        completion += "\n\\boxed{" + (normalize_number(tail) or tail.strip("$")) + "}"
    return completion


def _bounded(parsed: list[Any]) -> list[Any]:
    """The parses whose evaluation cannot stall (strings always; matrices entry by entry)."""
    from sympy.matrices import MatrixBase

    out = []
    for value in parsed:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, MatrixBase):
            if not any(too_large_to_evaluate(entry) for entry in value):
                out.append(value)
        elif not too_large_to_evaluate(value):
            out.append(value)
    return out


def _math_verdict(completion: str, reference: str) -> Verdict:
    """'unverified' when the reference holds no answer math-verify can read."""
    from math_verify import parse, verify

    gold_config, pred_config = _configs()
    # SIGALRM timeouts only in the main thread; elsewhere math-verify refuses to run with them.
    budget = _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(
        _reference_text(reference),
        gold_config,
        extraction_mode="first_match",
        parsing_timeout=budget,
    )
    if not gold:
        return "unverified"
    pred = parse(
        _completion_text(completion),
        pred_config,
        extraction_mode="first_match",
        parsing_timeout=budget,
    )
    pred = _bounded(pred)
    if not pred:
        return "incorrect"
    return "correct" if verify(gold, pred, timeout_seconds=budget) else "incorrect"


def verify_math(completion: str, reference: str) -> bool:
    """Whether the completion's final answer equals the reference answer.

    The completion's answer is its last ``\\boxed{...}`` (after ``</think>`` when present),
    else a ``#### N`` line, else what follows "answer"/"final answer is". The reference may be
    an answer (``\\frac{1}{2}``, ``0.5``, ``1,234``), a GSM8K solution ending ``#### N``, or a
    worked solution with a boxed answer. Equal values in any spelling match (``\\dfrac12`` =
    ``0.5``); a reference math-verify cannot read matches nothing.
    """
    return _math_verdict(completion, reference) == "correct"


def extract_code(completion: str) -> str | None:
    """The last fenced Python block (```python / ```py / a bare ```) of the completion, after
    ``</think>`` when present; None when there is none."""
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(completion)]
    # A tagged Python block beats an untagged one (often sample output or a shell line).
    for wanted in (_PYTHON_TAGS, ("",)):
        found = [body for tag, body in blocks if tag in wanted]
        if found:
            return found[-1]
    return None


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def _compiles(source: str) -> bool:
    try:
        compile(source, "prompt", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _program(code: str, tests: str, entry_point: str | None, prompt: str | None) -> str:
    """The program to run: the solution, then the tests, then ``check(entry_point)`` when the
    tests define HumanEval's ``check``."""
    if prompt and entry_point and _defines(prompt, entry_point):
        if not _defines(code, entry_point):  # a body only, continuing the prompt (HumanEval)
            code = prompt + code
        elif _compiles(prompt):
            # The solution restates the function: run the prompt first for its imports
            # (``List``) and helpers (HumanEval/38's ``encode_cyclic``); the solution's
            # definition then replaces the docstring-only one.
            code = prompt + "\n\n" + code
        else:
            imports = [
                line for line in prompt.splitlines() if line.startswith(("import ", "from "))
            ]
            code = "\n".join([*imports, "", code])
    program = code + "\n\n" + tests + "\n"
    if entry_point and re.search(r"^def\s+check\s*\(", tests, re.M):
        program += f"\n\ncheck({entry_point})\n"
    return program


def verify_code(
    completion: str,
    tests: str,
    entry_point: str | None = None,
    timeout: float = 10.0,
    *,
    prompt: str | None = None,
    memory_mb: int = 1024,
) -> bool:
    """Whether the completion's code passes the tests, run in the sandbox.

    ``tests`` is Python: asserts (MBPP) or HumanEval's ``def check(candidate)``, which is then
    called on ``entry_point``. ``prompt``: the problem's code prompt, used when it defines
    ``entry_point`` (a completion holding only the body continues it). A completion without a
    fenced code block, failing tests, an error, a timeout or too much memory all count as
    failing.
    """
    code = extract_code(completion)
    if code is None or not code.strip():
        return False
    result = run_program(_program(code, tests, entry_point, prompt), timeout, memory_mb)
    return result.passed


def _tests(record: Mapping[str, Any]) -> str | None:
    for column in ("test", "tests", "test_list"):
        value = record.get(column)
        if isinstance(value, (list, tuple)):
            value = "\n".join(str(v) for v in value)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _math_reference(record: Mapping[str, Any]) -> str | None:
    answer = record.get("answer")
    if answer is not None and str(answer).strip():
        return reference_answer(record)  # numbers formatted, GSM8K's "#### N" reduced
    solution = record.get("solution")
    if isinstance(solution, str) and ("\\boxed" in solution or "\\fbox" in solution):
        return solution
    return None


def verify_trace(record: Mapping[str, Any], completion: str, *, timeout: float = 10.0) -> Verdict:
    """'correct' / 'incorrect' for a record with tests or a reference answer, else
    'unverified' (nothing to check against, or a reference math-verify cannot read)."""
    tests = _tests(record)
    if tests is not None:
        entry_point = record.get("entry_point")
        prompt = record.get("prompt")
        passed = verify_code(
            completion,
            tests,
            str(entry_point) if entry_point else None,
            timeout,
            prompt=prompt if isinstance(prompt, str) else None,
        )
        return "correct" if passed else "incorrect"
    reference = _math_reference(record)
    if reference is None:
        return "unverified"
    return _math_verdict(completion, reference)

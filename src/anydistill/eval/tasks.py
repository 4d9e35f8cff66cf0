"""Task scoring: turn generated completions for a dataset's records into one number.

Three kinds of task, told apart by the records' columns (`detect_task`):

* ``pass_at_1`` -- code with unit tests (HumanEval: ``test`` + ``entry_point``); each
  completion runs in the sandbox of `anydistill.eval.sandbox`, a few at a time;
* ``exact_match`` -- a final answer (``answer``; GSM8K's worked ``... #### N`` form is
  reduced to ``N``), compared with `answers_match` after `extract_answer`;
* ``rouge_l`` -- free text (``response`` / ``output`` / ``completion``), scored by ROUGE-L F1.

`load_task_records` reads the shared evaluation sets in their upstream formats (GSM8K and
MATH-500 jsonl, SVAMP's JSON array, HumanEval's jsonl.gz) and any jsonl/json of records, and
gives every record a ``prompt`` and a ``reference`` so callers need not know the format.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

from anydistill.errors import DataError
from anydistill.eval.answers import answers_match, extract_answer
from anydistill.eval.rouge import rouge_l
from anydistill.eval.sandbox import humaneval_pass
from anydistill.paths import check_readable_file, decode_utf8, read_text

__all__ = [
    "TASK_KINDS",
    "detect_task",
    "reference_answer",
    "reference_text",
    "score_task",
    "load_task_records",
    "arithmetic_value",
]

TASK_KINDS = ("exact_match", "rouge_l", "pass_at_1")
RESPONSE_COLUMNS = ("response", "output", "completion")
_ID_COLUMNS = ("task_id", "unique_id", "id", "ID")
_DATA_FILES = ("test.jsonl", "SVAMP.json", "HumanEval.jsonl.gz")


def detect_task(records: Sequence[Mapping[str, Any]]) -> str:
    """The task kind the records' columns call for (columns every record has).

    ``test`` and ``entry_point`` -> ``pass_at_1``; ``answer`` -> ``exact_match``; a free-text
    reference (``response``, ``output`` or ``completion``) -> ``rouge_l``.
    """
    if not records:
        raise DataError("no records to score: the task file is empty")
    columns = set.intersection(*(set(r) for r in records))
    if {"test", "entry_point"} <= columns:
        return "pass_at_1"
    if "answer" in columns:
        return "exact_match"
    if columns & set(RESPONSE_COLUMNS):
        return "rouge_l"
    raise DataError(
        f"cannot tell how to score records with columns {sorted(columns)}: give them "
        "'answer' (exact match), 'response'/'output'/'completion' (ROUGE-L) or "
        "'test' + 'entry_point' (code, pass@1)"
    )


def _format_number(value: float | int | Fraction) -> str:
    """SVAMP stores answers as floats: 51.0 -> "51", 0.5 -> "0.5"."""
    if isinstance(value, Fraction):
        return str(value.numerator) if value.denominator == 1 else str(float(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def reference_answer(record: Mapping[str, Any]) -> str:
    """The final answer of a record's ``answer`` column (after ``####`` when there is one)."""
    answer = record["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return str(answer)
    if not isinstance(answer, str):
        return _format_number(answer)
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
    return answer.strip()


def reference_text(record: Mapping[str, Any]) -> str:
    """The free-text reference: the first of ``response``, ``output``, ``completion``."""
    for column in (*RESPONSE_COLUMNS, "reference"):
        if column in record and record[column] is not None:
            return str(record[column])
    raise DataError(f"record has no reference text column; it has {sorted(record)}")


def _record_id(record: Mapping[str, Any], index: int) -> Any:
    for column in _ID_COLUMNS:
        if column in record:
            return record[column]
    return index


def score_task(
    kind: str,
    records: Sequence[Mapping[str, Any]],
    completions: Sequence[str],
    workers: int | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Score ``completions[i]`` against ``records[i]``.

    Returns ``{"kind", "score", "n", "results"}``: the score is the mean over records (share
    correct, mean ROUGE-L F1 or pass@1), and ``results`` holds one dict per record (with its
    ``id``) saying why. Code runs ``workers`` sandboxes at a time (default: up to 4).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")
    if len(records) != len(completions):
        raise ValueError(
            f"{len(records)} records but {len(completions)} completions: they must align"
        )
    if not records:
        raise DataError("no records to score")
    results: list[dict[str, Any]]
    if kind == "exact_match":
        results = []
        for record, completion in zip(records, completions, strict=True):
            reference = reference_answer(record)
            prediction = extract_answer(completion)
            correct = answers_match(prediction, reference)
            results.append({"prediction": prediction, "reference": reference, "correct": correct})
        values = [float(r["correct"]) for r in results]
    elif kind == "rouge_l":
        results = [
            rouge_l(completion, reference_text(record))
            for record, completion in zip(records, completions, strict=True)
        ]
        values = [r["f1"] for r in results]
    else:
        pool_size = workers or min(4, os.cpu_count() or 1)

        def run(pair: tuple[Mapping[str, Any], str]) -> dict[str, Any]:
            outcome = humaneval_pass(pair[0], pair[1], timeout_s=timeout_s)
            return {
                "passed": outcome.passed,
                "status": outcome.status,
                "seconds": outcome.seconds,
                "stderr_tail": outcome.stderr_tail,
            }

        with ThreadPoolExecutor(max_workers=pool_size) as pool:
            results = list(pool.map(run, zip(records, completions, strict=True)))
        values = [float(r["passed"]) for r in results]
    for index, (record, result) in enumerate(zip(records, results, strict=True)):
        result["id"] = _record_id(record, index)
    return {"kind": kind, "score": sum(values) / len(values), "n": len(values), "results": results}


# --- loaders ------------------------------------------------------------------------------


def arithmetic_value(expression: str) -> Fraction:
    """Exact value of a ``+ - * /`` expression of numbers (SVAMP's ``Equation``), parsed with
    `ast` so nothing is executed."""

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                if right == 0:
                    raise ValueError(f"division by zero in {expression!r}")
                return left / right
        raise ValueError(f"not a plain arithmetic expression: {expression!r}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a plain arithmetic expression: {expression!r}") from exc
    return value(tree)


_TASK_HINT = "a task file holds one JSON object per line (.jsonl) or a JSON array of them (.json)"


def _task_text(path: Path, field: str) -> str:
    """The UTF-8 text of a task file, gunzipped when it ends in .gz."""
    if path.suffix != ".gz":
        return read_text(path, field)
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{field}: {path} is not a readable gzip file ({err}); give the task file "
            "uncompressed or gzip it again"
        ) from None
    return decode_utf8(raw, path, field)


def _read_rows(path: Path, field: str = "--task") -> list[tuple[str, Any]]:
    """(where, row) of each row of a .jsonl / .jsonl.gz / .json file (a JSON array, or an
    object holding one); `where` is `line N` or, inside an object, `record index N`."""
    text = _task_text(path, field)
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if not name.endswith(".json"):
        lines = enumerate(text.splitlines(), start=1)
        return [
            (f"line {n}", _json_line(line, n, path, field)) for n, line in lines if line.strip()
        ]
    from anydistill.data.loading import json_array_lines  # pulls in `datasets`: only here

    try:
        if text.lstrip().startswith("["):
            rows, lines = json_array_lines(text)
            return [(f"line {n}", row) for n, row in zip(lines, rows, strict=True)]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{field}: {path} line {err.lineno} is not valid JSON ({err.msg}); {_TASK_HINT}"
        ) from None
    lists = [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else []
    if len(lists) != 1:
        raise DataError(
            f"{field}: {path} holds neither a JSON array of records nor an object with one list "
            f"of them; {_TASK_HINT}"
        )
    return [(f"record index {i}", row) for i, row in enumerate(lists[0])]


def _json_line(line: str, lineno: int, path: Path, field: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{field}: {path} line {lineno} is not valid JSON ({err.msg}); {_TASK_HINT}"
        ) from None


def _task_file(path: Path, field: str) -> Path:
    """A dataset folder's data file (the shared folders hold one plus a LICENSE)."""
    for name in _DATA_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".json", ".jsonl.gz")))
    if len(found) != 1:
        raise DataError(
            f"{field}: {path} should hold one .jsonl/.json/.jsonl.gz data file, found "
            f"{len(found)}; pass the file itself"
        )
    return found[0]


def _svamp_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    body, question = str(raw["Body"]).strip(), str(raw["Question"]).strip()
    if body and not body.endswith((".", "?", "!")):
        body += "."
    answer = _format_number(raw["Answer"])
    return {
        "id": raw.get("ID"),
        "prompt": f"{body} {question}".strip(),
        "answer": answer,
        "reference": answer,
        # SVAMP's worked solution is its equation; written out it ends with the answer.
        "solution": f"{str(raw['Equation']).strip()} = {answer}",
        "equation": raw["Equation"],
        "type": raw.get("Type"),
    }


def _normalize_record(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map one upstream record to ``prompt`` / ``reference`` (plus its task columns)."""
    keys = set(raw)
    if {"prompt", "test", "entry_point"} <= keys:  # HumanEval
        return {**raw, "reference": raw.get("canonical_solution", "")}
    if {"Body", "Question", "Answer"} <= keys:  # SVAMP
        return _svamp_record(raw)
    if {"problem", "answer"} <= keys:  # MATH
        out = {k: v for k, v in raw.items() if k != "problem"}
        return {**out, "prompt": raw["problem"], "reference": reference_answer(raw)}
    if {"question", "answer"} <= keys:  # GSM8K: the answer is a worked solution ending "#### N"
        final = reference_answer(raw)
        extra = {k: v for k, v in raw.items() if k not in ("question", "answer")}
        return {
            **extra,
            "prompt": raw["question"],
            "answer": final,
            "reference": final,
            "solution": raw["answer"],
        }
    out = dict(raw)
    if "prompt" not in out:
        for column in ("instruction", "question", "problem", "input"):
            if column in out:
                prompt = str(out[column])
                if column == "instruction" and out.get("input"):
                    prompt = f"{prompt}\n\n{out['input']}"
                out["prompt"] = prompt
                break
    if "answer" in out:
        out["reference"] = reference_answer(out)
    else:
        for column in RESPONSE_COLUMNS:
            if column in out:
                out["reference"] = out[column]
                break
    return out


def load_task_records(path: str | Path, field: str = "--task") -> list[dict[str, Any]]:
    """Records of a task file (or a shared dataset folder), each with ``prompt`` and
    ``reference`` added; GSM8K's ``answer`` becomes the final number and the worked
    solution moves to ``solution``, SVAMP gets ``answer`` / ``solution`` the same way.
    `field` names the option in error messages."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = _task_file(path, field)
    path = check_readable_file(path, field, "give a task .jsonl/.json file or its folder")
    records = []
    for where, raw in _read_rows(path, field):
        if not isinstance(raw, dict):
            raise DataError(f"{field}: {path} {where} is not a JSON object; {_TASK_HINT}")
        record = _normalize_record(raw)
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            what = "has no prompt" if prompt is None else f"has a {type(prompt).__name__} prompt"
            raise DataError(
                f"{field}: {path} {where} {what} (columns {sorted(raw)}); give every record a "
                "string `prompt` (or `question`, `problem` or `instruction`)"
            )
        records.append(record)
    if not records:
        raise DataError(f"{field}: {path} holds no records")
    return records

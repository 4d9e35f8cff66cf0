"""Answer extraction and matching for exact-match scoring."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from anydistill.eval.answers import (
    answers_match,
    extract_answer,
    normalize_expression,
    normalize_number,
)

try:
    import sympy  # noqa: F401  (torch depends on it; expression checks need it)

    HAVE_SYMPY = True
except ImportError:  # pragma: no cover - the normalizer alone still runs
    HAVE_SYMPY = False

needs_sympy = pytest.mark.skipif(not HAVE_SYMPY, reason="sympy is not installed")

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
        ("1e-5", "0.00001"),
        ("1.5e3", "1500"),
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
    assert answers_match("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}")  # \\sqrt3 = \\sqrt{3}
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
    from anydistill.data.synthetic import arithmetic_problems

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


# Real-format generations and the exact string `extract_answer` must return for each.
EXTRACT_EXACT = [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 18", "18"),
    ("So he pays 1000 + 234 = $1,234.\n#### 1,234", "1,234"),
    ("#### -7\n", "-7"),
    ("The rate is 0.25 per hour.\n#### 0.25", "0.25"),
    ("Half of it: $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    (
        "Nested: $\\boxed{\\frac{\\sqrt{3}}{\\left(2\\right)}}$",
        "\\frac{\\sqrt{3}}{\\left(2\\right)}",
    ),
    ("Both $\\boxed{2}$ and finally $\\boxed{\\{1, 2\\}}$.", "\\{1, 2\\}"),
    ("Final: \\boxed{\\$18.90}", "\\$18.90"),
    ("Thus \\boxed{5\\text{ cm}}.", "5\\text{ cm}"),
    ("Thus $\\boxed 7$.", "7"),
    ("The answer is $5$.", "5"),
    ("The answer is -3.", "-3"),
    ("The answer is 3.75.", "3.75"),
    ("The answer is $x = 5$, since x > 0.", "x = 5"),
    ("the answer is 50\\%", "50\\%"),
    ("The answer is $\\$32,\\!348$.", "\\$32,\\!348"),
    ("**Answer:** $\\frac{1}{2}$", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $\\dfrac{3}{4}$. I hope it is correct.", "\\dfrac{3}{4}"),
    ("Let us find the answer: first 3 then 4.", "4"),  # "answer:" mid-line is not a label
    ("The total cost is $1,250.75", "1,250.75"),
    ("She saves 12.5%.", "12.5"),
    ("It fell to \u2212 4 and then to -4.", "-4"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_EXACT)
def test_extract_exact_strings(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


# (prediction, reference) pairs that must match (checked in both directions).
MATCHES = [
    ("1,234", "1234"),
    ("\\$1,234.50", "1234.5"),
    ("18 dollars", "\\$18.00"),
    ("-0.5", "-\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "0.75"),
    ("\\frac 34", "3/4"),
    ("\\frac9{19}", "\\frac{9}{19}"),
    ("\\tfrac{1}{2}", "\\frac12"),
    ("137 \\frac{1}{2}", "275/2"),
    ("1\\frac{4}{5}", "1.8"),
    ("50\\%", "50"),
    ("12.5%", "12.5"),
    ("30^\\circ", "30"),
    ("106^{\\circ}", "106"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
    ("5.4 \\text{ cents}", "5.4"),
    ("15\\mbox{ cm}^2", "15"),
    ("864 \\mbox{ inches}^2", "864"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    ("10,\\!080", "10080"),
    ("x = 5", "5"),
    ("x=5", "x = 5"),
    ("x \\in [-2,7]", "[-2, 7]"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(3/5, 8/3]"),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(3,\\infty)\\cup(-\\infty,2)"),
    ("3, 5, 7", "7, 5, 3"),
    ("-2,1", "1, -2"),
    ("\\{1\\pm\\sqrt{5},-2\\}", "-2, 1+\\sqrt5, 1-\\sqrt5"),
    ("1 \\pm \\sqrt{19}", "1-\\sqrt{19}, 1+\\sqrt{19}"),
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}",
    ),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix}-\\frac13\\\\\\frac23\\\\\\frac53\\end{pmatrix}",
    ),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\left(\\frac15, -\\frac{18}{5}\\right)"),
    ("4210_{5}", "4210_5"),
    ("1011_2", "1011"),
    ("\\text{(B)}", "B"),
    ("\\text{Evelyn}", "evelyn"),
    ("\\text{east}", "East"),
    ("\\$32,\\!348", "32348"),
    (".0000672", "0.0000672"),
    ("1e-5", "0.00001"),
    ("6.72E+3", "6720"),
    ("0.6666666", "\\frac{2}{3}"),  # a decimal matches what it truncates or rounds
    ("1000.5", "1000.5001"),
]

# Equal as expressions rather than as strings: these need sympy.
SYMBOLIC_MATCHES = [
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("(a+5)(b+2)", "ab+2a+5b+10"),
    ("\\frac{11+9a}{20}", "\\frac{9a+11}{20}"),
    ("2k+2", "2(k+1)"),
    ("x^3+3x-6", "-6+3x+x^3"),
    ("y = 2x + 3", "2x+3"),
    ("-2 + 7i", "7i-2"),
    ("p - q", "-q+p"),
    ("2\\sqrt{5}", "\\sqrt{20}"),
    ("\\frac{20000}{\\pi}", "20000/\\pi"),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]"),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}"),
    ("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0"),
    ("6.72\\times 10^{-5}", ".0000672"),
    ("\\sqrt[3]{8}", "2"),
    ("e^{i\\pi}", "-1"),
    ("\\binom{5}{2}", "10"),
    ("5!", "120"),
    ("\\sin^2 x + \\cos^2 x", "1"),
    ("0.5773503", "\\frac{\\sqrt{3}}{3}"),  # decimals approximate (relative 1e-6)
]


@needs_sympy
def test_exact_expressions_are_compared_exactly() -> None:
    assert not answers_match("10^{10}+1", "10^{10}")
    assert not answers_match("2^{30}", "1073741825")
    assert answers_match("2^{30}", "1073741824")
    assert not answers_match("0.577", "\\frac{\\sqrt{3}}{3}")


# Pairs that must NOT match (either direction).
MISMATCHES = [
    ("(3,4]", "(3,4)"),
    ("(-\\infty, 0]", "(-\\infty,0)"),
    ("(15,-29)", "(-29,15)"),  # a tuple is ordered
    ("(1,2)", "[1,2]"),
    ("\\{1,2\\}", "(1,2)"),
    ("3, 5, 7", "3, 5"),
    ("1 \\pm \\sqrt{19}", "1+\\sqrt{19}"),  # both roots are needed
    ("\\frac{\\sqrt{3}}{3}", "\\sqrt{3}"),
    ("-2 + 7i", "-2-7i"),
    ("5x - 7y + 11z + 4 = 0", "5x-7y+11z-4=0"),
    ("\\text{even}", "\\text{odd}"),
    ("(B)", "(C)"),
    ("4210_{5}", "4210_6"),
    ("1011_2", "11"),  # the digits are the answer, not the decimal value
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & 1 \\end{pmatrix}",
    ),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"),
    ("x=5", "y=5"),
    ("2x", "2"),
    ("x_2", "x"),
    ("0.33", "1/3"),
    ("\\pi", "3.14"),
    ("10", "100"),
    ("1,2", "12"),
    ("200, 1", "1,200"),  # "1,200" is a number, not a list
    ("\\sqrt{2}", "2"),
    ("x+1", "x-1"),
    ("\\frac{1}{2}", "2"),
    ("(a+5)(b+2)", "(a+2)(b+5)"),
    ("even", "neve"),  # words are not products of letters
    ("-1", "1"),
    ("i", "-i"),
    ("\\infty", "-\\infty"),
    ("-5", "5\\%"),
    ("", "0"),
    ("1450001", "1,450,000"),  # large integers are exact, not within a relative 1e-6
    ("0.6667", "\\frac{2}{3}"),  # too coarse to stand for 2/3
    ("1000.5", "1001"),
]


@pytest.mark.parametrize(("pred", "ref"), MATCHES)
def test_answers_match_table(pred: str, ref: str) -> None:
    assert answers_match(pred, ref), (pred, ref)
    assert answers_match(ref, pred), (ref, pred)


@needs_sympy
@pytest.mark.parametrize(("pred", "ref"), SYMBOLIC_MATCHES)
def test_answers_match_symbolic(pred: str, ref: str) -> None:
    assert answers_match(pred, ref), (pred, ref)
    assert answers_match(ref, pred), (ref, pred)


@pytest.mark.parametrize(("pred", "ref"), MISMATCHES)
def test_answers_mismatch_table(pred: str, ref: str) -> None:
    assert not answers_match(pred, ref), (pred, ref)
    assert not answers_match(ref, pred), (ref, pred)


@pytest.mark.parametrize(
    "hostile",
    [
        "9^{9^{9^{9}}}",
        "(10^{10^{10}})!",
        "\\text{__import__('os').system('true')}",
        "\\text{exit()}",
        "x." + "real",
        "{" * 300 + "}" * 300,
        "2" * 5000,
        "(" * 600 + "1" + ",1)" * 600,
        "1\\pm" * 40 + "1",
        "\\sqrt{" * 400 + "2" + "}" * 400,
    ],
)
def test_hostile_predictions_are_fast_and_false(hostile: str) -> None:
    """Predictions come from a model: nothing in them may run, stall or crash the scorer."""
    start = time.perf_counter()
    assert not answers_match(hostile, "1")
    assert time.perf_counter() - start < 5


def test_long_lists_match_in_any_order_quickly() -> None:
    items = [f"x^{{{i}}}+{i}" for i in range(80)]
    start = time.perf_counter()
    assert answers_match(", ".join(items), ", ".join(reversed(items)))
    assert not answers_match(", ".join(items), ", ".join(items[:-1] + ["0"]))
    assert time.perf_counter() - start < 5


def _math500() -> list[dict]:
    path = _shared_data() / "math500" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"MATH-500 data not found at {path} (set ANYDISTILL_SHARED_DATA)")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_math500_reference_solutions_recover_their_answers() -> None:
    records = _math500()
    failures = [
        (r["unique_id"], extract_answer(r["solution"]), r["answer"])
        for r in records
        if not answers_match(extract_answer(r["solution"]), r["answer"])
    ]
    assert len(records) == 500
    assert len(failures) <= len(records) // 100, failures  # >= 99% (all 500 today)


def test_math500_answers_match_their_respellings() -> None:
    """Each reference answer, written the ways a model writes it, still matches."""
    for record in _math500():
        answer = record["answer"]
        spellings = [
            f"${answer}$",
            extract_answer(f"So the final answer is $\\boxed{{{answer}}}$."),
            extract_answer(f"Thus the answer is ${answer}$.\n"),
            extract_answer(f"**Answer:** ${answer}$"),
            answer.replace("\\frac", "\\dfrac"),
            answer.replace(",", ", ").replace("+", " + "),
        ]
        if "\\begin" not in answer and "\\cot" not in answer:
            spellings.append(answer.replace(" ", ""))
        for spelling in spellings:
            assert answers_match(spelling, answer), (record["unique_id"], spelling, answer)


# Distinct MATH-500 answers that are genuinely the same value.
_MATH500_EQUIVALENT = {
    frozenset(pair)
    for pair in [
        ("-2,1", "1,-2"),
        ("10,\\!080", "10080"),
        ("120", "120^\\circ"),
        ("15", "15\\mbox{ cm}^2"),
        ("2 \\sqrt{5}", "2\\sqrt{5}"),
        ("30", "30^\\circ"),
        ("36", "36^\\circ"),
        ("36", "\\$36"),
        ("36^\\circ", "\\$36"),
        ("40", "40_9"),
        ("5", "x=5"),
        ("90", "90^\\circ"),
        ("\\frac14", "\\frac{1}{4}"),
    ]
}


def test_math500_distinct_answers_do_not_match() -> None:
    """False-positive guard: each answer against its sorted neighbours (similar strings)."""
    answers = sorted({r["answer"] for r in _math500()})
    for i, a in enumerate(answers):
        for b in answers[i + 1 : i + 6]:
            expected = frozenset((a, b)) in _MATH500_EQUIVALENT
            assert answers_match(a, b) == expected, (a, b)
            assert answers_match(b, a) == expected, (b, a)


def test_svamp_equations_recover_their_answers() -> None:
    path = _shared_data() / "svamp" / "SVAMP.json"
    if not path.is_file():
        pytest.skip(f"SVAMP data not found at {path} (set ANYDISTILL_SHARED_DATA)")
    records = json.loads(path.read_text(encoding="utf-8"))
    assert len(records) == 1000
    for record in records:
        answer = record["Answer"]
        solution = f"{record['Equation'].strip()} = {answer}"  # the record's worked solution
        assert answers_match(extract_answer(solution), str(answer)), record["ID"]
        plain = int(answer) if answer == int(answer) else answer  # 51.0 -> 51
        assert answers_match(extract_answer(f"So the answer is {plain}."), str(answer))

"""Final-answer extraction and comparison for exact-match task scoring.

`extract_answer` pulls the final answer out of a generated solution (GSM8K ``#### N``,
MATH ``\\boxed{...}``, "The answer is X", else the last number). `normalize_number` turns a
numeric answer into one canonical spelling, and `answers_match` decides whether a
prediction equals a reference: numerically when both are numbers, else by a normalized
string comparison of the LaTeX.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["extract_answer", "normalize_number", "answers_match", "normalize_expression"]

# A number as written in solutions: optional sign, thousands groups or plain digits,
# optional decimals. Thousands groups are tried first so "1,234" is one number.
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
_LAST_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:/\d+)?")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMERIC_RE = re.compile(rf"({_NUMBER})(?:/(\d+))?")
_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
_SIMPLE_FRAC_RE = re.compile(r"^(-?)\\[dt]?frac(\d)(\d)$")  # \frac12 shorthand
# Trailing units after a number: words, %, degree marks ("18 dollars", "50%", "30 cm.").
_UNITS_RE = re.compile(r"(?<=[\d}])(?:\s+[A-Za-z][A-Za-z .]*|\s*(?:%|\\%|\^\\circ|\^\{\\circ\}))$")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None  # unbalanced: the generation was cut off


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\boxed 5``) in ``text``."""
    for match in reversed(list(_BOXED_RE.finditer(text))):
        group = _braced(text, match.end())
        if group is not None:
            return group[0].strip()
        # "\boxed 5" form: the argument is the next run of non-space characters
        rest = text[match.end() :].split(None, 1)
        if rest and not rest[0].startswith("{"):
            return rest[0].rstrip("$.").strip()
    return None


def _unwrap_command(text: str, command: str) -> str:
    """Replace every ``\\command{X}`` with ``X`` (balanced braces)."""
    marker = "\\" + command
    out = []
    i = 0
    while True:
        j = text.find(marker, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = j + len(marker)
        while k < len(text) and text[k] == " ":
            k += 1
        group = _braced(text, k)
        if group is None:
            out.append(text[i:k])
            i = k
            continue
        out.append(text[i:j])
        out.append(group[0])
        i = group[1]


def extract_answer(text: str) -> str | None:
    """Return the final answer of a generated solution, or None when there is none.

    Order of preference: the text after the last ``####`` (up to the end of that line), the
    last balanced ``\\boxed{...}``, the text after the last "The answer is", else the last
    number in the text. The result is stripped but not normalized; compare with
    `answers_match`.
    """
    if not text:
        return None
    if "####" in text:
        # Only the first line: a model may keep generating after its final line.
        tail = text.rsplit("####", 1)[1].lstrip(" \t").split("\n", 1)[0].strip()
        if tail:
            return tail
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    matches = list(_ANSWER_IS_RE.finditer(text))
    if matches:
        tail = text[matches[-1].end() :].split("\n", 1)[0]
        # End at the sentence: ". " or a final "." -- but keep decimal points ("3.5").
        tail = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0].strip()
        tail = tail.strip("*").strip()  # markdown bold around the answer
        if tail:
            return tail
    numbers = _LAST_NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _strip_decorations(s: str, units: bool) -> str:
    """Remove currency, LaTeX spacing and math delimiters (and trailing units if asked)."""
    s = s.strip().replace("\u2212", "-")  # unicode minus sign
    s = _unwrap_command(s, "boxed")
    for token in ("\\$", "$", "\\!", "\\,", "\\;", "\\:", "\\left", "\\right", "**"):
        s = s.replace(token, "")
    s = _unwrap_command(_unwrap_command(s, "text"), "mbox")
    s = s.strip().rstrip(".").strip()
    if units:
        s = _UNITS_RE.sub("", s).strip().rstrip(".").strip()
    return s


def _parse_number(s: str | None) -> Fraction | None:
    """Exact value of a numeric answer (int, decimal, fraction), or None if not numeric."""
    if s is None:
        return None
    s = _strip_decorations(s, units=True)
    if not s:
        return None
    s = re.sub(r"\s+", "", s)
    # Commas only as thousands separators: "1,000" -> "1000" but "1,2" stays non-numeric.
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    latex = _FRAC_RE.match(s) or _SIMPLE_FRAC_RE.match(s)
    if latex:
        sign, num, den = latex.groups()
        s = f"{sign}{num}/{den}"
    match = _NUMERIC_RE.fullmatch(s)
    if not match or not re.search(r"\d", match.group(1)):
        return None
    value = Fraction(match.group(1))
    if match.group(2) is not None:
        den = int(match.group(2))
        if den == 0:
            return None
        value /= den
    return value


def normalize_number(s: str) -> str | None:
    """Canonical spelling of a numeric answer, or None when ``s`` is not a number.

    Strips ``$``, thousands commas, trailing ``.`` and units; "7.0" -> "7", "7.50" -> "7.5";
    keeps negatives and fractions ("3/4", ``\\frac{3}{4}`` -> "3/4").
    """
    cleaned = _strip_decorations(s, units=True) if s is not None else None
    value = _parse_number(s)
    if value is None or cleaned is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in cleaned or "frac" in cleaned:
        return f"{value.numerator}/{value.denominator}"
    # A decimal: print it exactly, without trailing zeros.
    text = re.sub(r"\s+", "", cleaned).replace(",", "").lstrip("+")
    sign = "-" if value < 0 else ""
    digits = text.lstrip("-")
    whole, _, frac = digits.partition(".")
    return f"{sign}{int(whole or '0')}.{frac.rstrip('0')}"


def normalize_expression(s: str) -> str:
    """Normalize a non-numeric (LaTeX) answer for string comparison."""
    s = _strip_decorations(s, units=False)
    for command in ("text", "textbf", "mathrm", "mbox"):
        s = _unwrap_command(s, command)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    for token in ("^\\circ", "^{\\circ}", "\\circ", "\\displaystyle"):
        s = s.replace(token, "")
    s = re.sub(r"\s+", "", s)
    return s.rstrip(".")


def answers_match(pred: str | None, ref: str) -> bool:
    """True when the predicted answer equals the reference answer.

    Both numeric: equal within 1e-6 (fractions evaluated, so "1/2" == "0.5"). Otherwise the
    `normalize_expression` forms must be identical. A missing prediction never matches.
    """
    if pred is None:
        return False
    pred_value, ref_value = _parse_number(pred), _parse_number(ref)
    if pred_value is not None and ref_value is not None:
        return math.isclose(float(pred_value), float(ref_value), rel_tol=1e-6, abs_tol=1e-6)
    return normalize_expression(pred) == normalize_expression(ref)

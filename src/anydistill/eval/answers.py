"""Final-answer extraction and comparison for exact-match task scoring.

`extract_answer` pulls the final answer out of a generated solution (GSM8K ``#### N``,
MATH ``\\boxed{...}``, "The answer is X" / "Answer: X", else the last number).
`normalize_number` turns a numeric answer into one canonical spelling, and `answers_match`
decides whether a prediction equals a reference the way a grader of MATH-style answers would:

* numbers compare by exact value (``1,234`` = ``1234.0``, ``\\frac{1}{2}`` = ``0.5``), a
  decimal also matching the value it rounds (``0.3333333`` = ``1/3``, not ``0.33``), after
  dropping ``$``, ``\\%``, ``^\\circ``, units (``5\\text{ cm}^2``) and ``x =`` (``x = 5``
  matches ``5``, not ``y = 5``);
* LaTeX is put in one canonical spelling (``\\dfrac`` -> ``\\frac``, ``\\sqrt3`` ->
  ``\\sqrt{3}``, no ``\\left``/``\\right``/``\\!``/spaces, ``\\text{}`` unwrapped);
* tuples and intervals compare element-wise in order (brackets must agree); sets, unions
  and bare comma lists of solutions compare in any order, and ``a \\pm b`` stands for both
  ``a + b`` and ``a - b``; matrices compare entry by entry; ``1011_2`` equals ``1011``;
* anything else is compared as an expression: when sympy is importable (it ships with
  torch), both sides are parsed from a whitelisted translation of the LaTeX and compared
  numerically at fixed points, so ``2\\sqrt{5}`` = ``\\sqrt{20}`` and ``x(x+1)`` = ``x^2+x``.
  Without sympy only the canonical strings are compared.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any

__all__ = [
    "extract_answer",
    "normalize_number",
    "answers_match",
    "normalize_expression",
    "too_large_to_evaluate",
]

# A number as written in solutions: optional sign, thousands groups or plain digits,
# optional decimals. Thousands groups are tried first so "1,234" is one number.
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
_LAST_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:/\d+)?")
# "The answer is X" anywhere; "Answer: X" / "**Final Answer:** X" only at the start of a line.
_ANSWER_IS_RE = re.compile(
    r"answer\s+is\s*:?\s*|^[ \t*#]*(?:final\s+)?answer\s*\**\s*:\s*", re.IGNORECASE | re.MULTILINE
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMERIC_RE = re.compile(rf"({_NUMBER})(?:/(\d+))?")
_FRAC_RE = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")
_MIXED_RE = re.compile(r"^(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")  # 137\frac{1}{2} = 137.5
_SCIENTIFIC_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d{1,3}")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Trailing plain-word units after a number: "18 dollars", "30 cm.", "5 cm^2".
_WORD_UNITS_RE = re.compile(r"(?<=[\d}])\s+[A-Za-z][A-Za-z .]*(?:\^\{?\d\}?)?$")
# A trailing \text{ unit} group (optionally squared/cubed); only removed after other content.
_TEXT_UNIT_RE = re.compile(
    r"\\(?:text|mbox|mathrm|textrm|textnormal)\s*\{\s*([A-Za-z][A-Za-z .]*)\}\s*"
    r"(?:\^\s*\{?\s*\d\s*\}?)?\s*$"
)
_TEXT_COMMANDS = (
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "operatorname",
)
# LaTeX spacing and sizing: "\\\\" (a matrix row break) is matched first so it is kept.
_SPACING_RE = re.compile(
    r"\\\\|\\[!,;: ]|~|\\(?:quad|qquad|left|right|displaystyle|textstyle)(?![A-Za-z])"
    r"|\\(?:big|Big|bigg|Bigg)[lr]?(?![A-Za-z])"
)
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])|°")
# "x = 5", "f(x) = ...", "\theta = 30", "x \in [1, 2]": a single-variable left side.
_ASSIGN_RE = re.compile(
    r"^\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*(?:=|\\in(?![A-Za-z]))\s*"
)
_BASE_RE = re.compile(r"^([0-9A-Z]+)_\{?(\d{1,2})\}?$")
_MATRIX_RE = re.compile(r"^\\begin\{([pbB]?matrix)\}(.*)\\end\{\1\}$", re.DOTALL)
_REL_TOL = 1e-6
_DIGITS = 50  # working precision of expression comparisons
_MAX_ITEMS = 64  # longest list compared item by item


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
        if k < len(text) and text[k].isalpha():  # a longer command (\textbf vs \text)
            out.append(text[i:k])
            i = k
            continue
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


def _math_span(tail: str) -> str:
    """The answer after "The answer is": a leading ``$...$`` / ``\\(...\\)`` span, else the
    sentence (ended by ". " or a final ".", keeping decimal points)."""
    tail = tail.strip().strip("*").strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if tail.startswith(opening):
            end = len(opening)
            while True:  # the closing delimiter, skipping escaped dollars ("\\$5")
                end = tail.find(closing, end)
                if end < 0 or tail[end - 1] != "\\":
                    break
                end += 1
            if end > len(opening):
                return tail[len(opening) : end].strip()
            break
    return re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0].strip().strip("*").strip()


def extract_answer(text: str) -> str | None:
    """Return the final answer of a generated solution, or None when there is none.

    Order of preference: the text after the last ``####`` (up to the end of that line), the
    last balanced ``\\boxed{...}``, the text after the last "The answer is" / "Answer:", else
    the last number in the text. The result is stripped but not normalized; compare with
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
        tail = _math_span(text[matches[-1].end() :].split("\n", 1)[0])
        if tail:
            return tail
    numbers = _LAST_NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def _spacing(match: re.Match[str]) -> str:
    """Keep row breaks, turn visible spaces into a space, drop the rest."""
    token = match.group(0)
    if token == "\\\\":
        return token
    return " " if token in ("\\ ", "~", "\\quad", "\\qquad") else ""


def _brace_arguments(s: str) -> str:
    """Give ``\\frac``, ``\\binom`` and ``\\sqrt`` braced arguments: ``\\frac12`` ->
    ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``, ``\\frac9{19}`` -> ``\\frac{9}{19}``."""
    out: list[str] = []
    i = 0
    while i < len(s):
        m = re.match(r"\\(frac|binom|sqrt)(?![A-Za-z])", s[i:])
        if not m:
            if s[i] == "{":  # recurse into groups so nested shorthand is braced too
                group = _braced(s, i)
                if group is not None:
                    out.append("{" + _brace_arguments(group[0]) + "}")
                    i = group[1]
                    continue
            out.append(s[i])
            i += 1
            continue
        name = m.group(1)
        out.append("\\" + name)
        i += m.end()
        if name == "sqrt":
            while i < len(s) and s[i] == " ":
                i += 1
            if i < len(s) and s[i] == "[":
                end = s.find("]", i)
                if end < 0:
                    out.append(s[i:])
                    break
                out.append(s[i : end + 1])
                i = end + 1
        for _ in range(1 if name == "sqrt" else 2):
            while i < len(s) and s[i] == " ":
                i += 1
            if i >= len(s):
                break
            group = _braced(s, i)
            if group is not None:
                out.append("{" + _brace_arguments(group[0]) + "}")
                i = group[1]
                continue
            cmd = re.match(r"\\[A-Za-z]+", s[i:])
            arg = cmd.group(0) if cmd else s[i]
            out.append("{" + arg + "}")
            i += len(arg)
    return "".join(out)


def _tidy(s: str) -> str:
    """Strip what never changes an answer: delimiters, currency, spacing, degree and
    percent marks, ``\\text`` units, ``x =``; keeps ordinary spaces for the unit checks."""
    s = s.strip().replace("\u2212", "-")
    s = _unwrap_command(_unwrap_command(s, "boxed"), "fbox")
    for token in ("\\$", "$", "\\(", "\\)", "\\[", "\\]"):
        s = s.replace(token, "")
    s = s.strip().strip("*").strip()  # markdown bold around the answer
    s = _SPACING_RE.sub(_spacing, s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![A-Za-z])", r"\\binom", s)
    s = _DEGREES_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.strip().rstrip(".").strip()
    while True:  # trailing units: "5.4 \text{ cents}", "15\mbox{ cm}^2"
        match = _TEXT_UNIT_RE.search(s)
        if not match or not s[: match.start()].strip():
            break
        s = s[: match.start()].strip()
    for command in _TEXT_COMMANDS:
        s = _unwrap_command(s, command)
    return s.strip().rstrip(".").strip()


def _squeeze(s: str) -> str:
    """Canonical spelling: braced arguments, ``^{2}`` -> ``^2``, no spaces (except one that
    keeps a command apart from a following letter, as in ``\\cot x``)."""
    s = _brace_arguments(s)
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", "\\1\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)
    return s.rstrip(".")


def _number_text(s: str) -> str:
    """The canonical text of a would-be number: decorations and trailing word units gone."""
    s = _tidy(s)
    s = _WORD_UNITS_RE.sub("", s).strip().rstrip(".").strip()
    return _squeeze(s)


def _parse_number(s: str | None) -> Fraction | None:
    """Exact value of a numeric answer (int, decimal, fraction, mixed number), or None."""
    if s is None:
        return None
    return _number_value(_number_text(s))


def _numbers_equal(a: Fraction, a_text: str, b: Fraction, b_text: str) -> bool:
    """Exact equality, except that a decimal may stand for a value it rounds or truncates:
    ``0.3333333`` = 1/3 (within one unit of its last place and a relative 1e-6), but
    ``0.33`` != 1/3 and ``1450001`` != ``1,450,000``."""
    if a == b:
        return True
    places = [len(m.group(1)) for t in (a_text, b_text) if (m := re.search(r"\.(\d+)", t))]
    if not places:
        return False  # integers and fractions are exact
    diff = abs(a - b)
    return diff <= Fraction(1, 10 ** min(places)) and diff <= _REL_TOL * max(abs(a), abs(b))


def _number_value(s: str) -> Fraction | None:
    """Exact value of an already canonical numeric string, or None."""
    if not s or len(s) > 200:
        return None
    # Commas only as thousands separators: "1,000" -> "1000" but "1,2" stays non-numeric.
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    mixed = _MIXED_RE.match(s)
    if mixed:
        sign, whole, num, den = mixed.groups()
        if int(den) == 0:
            return None
        value = int(whole) + Fraction(int(num), int(den))
        return -value if sign else value
    if _SCIENTIFIC_RE.fullmatch(s):  # "1e-5", "6.72E+3"
        return Fraction(s)
    latex = _FRAC_RE.match(s)
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
    if s is None:
        return None
    value = _parse_number(s)
    if value is None:
        return None
    cleaned = _number_text(s)
    if value.denominator == 1:
        return str(value.numerator)
    if "/" in cleaned or "frac" in cleaned:
        return f"{value.numerator}/{value.denominator}"
    # A decimal (maybe "1e-5"): print it exactly, without trailing zeros.
    text = format(Decimal(cleaned.replace(",", "")), "f")
    return text.rstrip("0") if "." in text else text


def normalize_expression(s: str) -> str:
    """Canonical spelling of a (LaTeX) answer, the form `answers_match` compares first."""
    return _squeeze(_tidy(s))


# --- structured answers -------------------------------------------------------------------

_OPEN, _CLOSE = "([{", ")]}"


def _top_level_split(s: str, sep: str) -> list[str]:
    """Split ``s`` on ``sep`` outside any bracket pair."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and s.startswith(("\\{", "\\}"), i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """True when the bracket opening ``s`` closes at its last character."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _expand_pm(items: list[str]) -> list[str]:
    """``a \\pm b`` stands for the two answers ``a+b`` and ``a-b``."""
    out: list[str] = []
    for item in items:
        if item.count("\\pm") + item.count("\\mp") > 3:  # 2**k answers: leave it alone
            out.append(item)
            continue
        pending = [item]
        while pending:
            x = pending.pop()
            m = re.search(r"\\(pm|mp)(?![A-Za-z])", x)
            if m is None:
                out.append(x)
                continue
            first, second = ("+", "-") if m.group(1) == "pm" else ("-", "+")
            pending += [
                x[: m.start()] + first + x[m.end() :],
                x[: m.start()] + second + x[m.end() :],
            ]
    return out


def _structure(s: str) -> tuple[str, list[str]] | None:
    """Split a canonical answer into (kind, parts), or None for a single expression.

    Kinds: ``matrix:RxC`` (entries row by row), ``ordered:()`` etc. (tuples, intervals,
    vectors: bracket pair in the kind), ``union`` (of intervals, any order) and ``unordered``
    (sets, bare comma lists of solutions, ``\\pm``).
    """
    matrix = _MATRIX_RE.match(s)
    if matrix:
        rows = [r for r in matrix.group(2).split("\\\\") if r.strip()]
        cells = [r.split("&") for r in rows]
        width = len(cells[0]) if cells else 0
        if not cells or any(len(r) != width for r in cells):
            return ("matrix:ragged", [s])
        return (f"matrix:{len(cells)}x{width}", [c for row in cells for c in row])
    if _THOUSANDS_RE.fullmatch(s):
        return None  # "1,234" is a number, not a list
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("unordered", _expand_pm(_top_level_split(s[2:-2], ",")))
    union = _top_level_split(s, "\\cup")
    if len(union) > 1:
        return ("union", union)
    if s[:1] in "([" and s[-1:] in ")]" and _encloses(s):
        items = _top_level_split(s[1:-1], ",")
        if len(items) > 1:
            return (f"ordered:{s[0]}{s[-1]}", items)
    items = _top_level_split(s, ",")
    if len(items) > 1:
        return ("unordered", _expand_pm(items))
    expanded = _expand_pm([s])
    if len(expanded) > 1:
        return ("unordered", expanded)
    return None


def _match_unordered(preds: list[str], refs: list[str]) -> bool:
    """A one-to-one pairing of equivalent items exists (bipartite matching)."""
    if len(preds) != len(refs):
        return False
    preds, refs = list(preds), list(refs)
    for item in list(refs):  # identical items pair up first (safe: equivalence is transitive)
        if item in preds:
            preds.remove(item)
            refs.remove(item)
    if len(refs) > _MAX_ITEMS:  # too many to pair up expression by expression
        return sorted(preds) == sorted(refs)
    fits = [[j for j, p in enumerate(preds) if _equivalent(p, r)] for r in refs]
    owner: dict[int, int] = {}  # pred index -> ref index it is paired with

    def pair(r: int, seen: set[int]) -> bool:
        for j in fits[r]:
            if j not in seen:
                seen.add(j)
                if j not in owner or pair(owner[j], seen):
                    owner[j] = r
                    return True
        return False

    return all(pair(r, set()) for r in range(len(refs)))


def _structures_match(p: tuple[str, list[str]], r: tuple[str, list[str]]) -> bool:
    (pkind, pitems), (rkind, ritems) = p, r
    if rkind == "matrix:ragged" or pkind == "matrix:ragged":
        return False
    column = {pkind, rkind} == {f"matrix:{len(ritems)}x1", "ordered:()"}  # vector as tuple
    if pkind != rkind and not column:
        return False
    if rkind in ("unordered", "union"):
        return _match_unordered(pitems, ritems)
    return len(pitems) == len(ritems) and all(
        _equivalent(a, b) for a, b in zip(pitems, ritems, strict=True)
    )


# --- scalar answers -----------------------------------------------------------------------


def _split_assignment(s: str) -> tuple[str | None, str]:
    """``x = 5`` -> ("x", "5"); ``x \\in [1,2]`` -> ("x", "[1,2]"); else (None, s)."""
    if s.count("=") > 1:
        return None, s
    match = _ASSIGN_RE.match(s)
    if match and s[match.end() :].strip():
        return re.sub(r"\s+|=|\\in$", "", s[: match.end()]), s[match.end() :]
    return None, s


def _choice(s: str) -> str | None:
    """The letter of a multiple-choice answer: "(B)" or "B" -> "B"."""
    m = re.fullmatch(r"\(([A-E])\)|([A-E])", s)
    return (m.group(1) or m.group(2)) if m else None


def _equivalent(pred: str, ref: str) -> bool:
    """Equivalence of two canonical answers (see the module docstring for the rules)."""
    (plhs, pred), (rlhs, ref) = _split_assignment(pred), _split_assignment(ref)
    if plhs is not None and rlhs is not None and plhs != rlhs:
        return False  # "x = 1" is not "y = 1"; a side without a name is fine
    if pred == ref:
        return True
    if not pred or not ref:
        return False
    pv, rv = _number_value(pred), _number_value(ref)
    if pv is not None and rv is not None:
        return _numbers_equal(pv, pred, rv, ref)
    ps, rs = _structure(pred), _structure(ref)
    if ps is not None or rs is not None:
        return ps is not None and rs is not None and _structures_match(ps, rs)
    pb, rb = _BASE_RE.match(pred), _BASE_RE.match(ref)
    if pb or rb:  # 1011_2: the digits are the answer; a missing base subscript is allowed
        pdigits, pbase = pb.groups() if pb else (pred, None)
        rdigits, rbase = rb.groups() if rb else (ref, None)
        same_base = pbase is None or rbase is None or int(pbase) == int(rbase)
        return same_base and pdigits == rdigits
    if pred.startswith("(") or ref.startswith("("):
        pc, rc = _choice(pred), _choice(ref)
        if pc is not None or rc is not None:
            return pc == rc
    if re.fullmatch(r"[A-Za-z]{3,}", pred) and re.fullmatch(r"[A-Za-z]{3,}", ref):
        return pred.lower() == ref.lower()  # words ("Evelyn", "east"), not products
    return _symbolic_equal(pred, ref)


def answers_match(pred: str | None, ref: str) -> bool:
    """True when the predicted answer equals the reference answer.

    Both numeric: equal values ("1/2" == "0.5"), a decimal also matching what it rounds or
    truncates to its last place within a relative 1e-6 ("0.3333333" == "1/3"). Otherwise the
    canonical LaTeX forms, then structures, then expressions are compared (see the module
    docstring). A missing or empty prediction never matches.
    """
    if pred is None or ref is None:
        return False
    try:
        pred_text, ref_text = _number_text(pred), _number_text(ref)
        pred_value, ref_value = _number_value(pred_text), _number_value(ref_text)
        if pred_value is not None and ref_value is not None:
            return _numbers_equal(pred_value, pred_text, ref_value, ref_text)
        p, r = normalize_expression(pred), normalize_expression(ref)
        return bool(p and r) and _equivalent(p, r)
    except RecursionError:  # absurdly nested generations ("((((...") are wrong, not fatal
        return False


# --- expressions via sympy ----------------------------------------------------------------

_FUNCTIONS = {
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "cot": "cot",
    "sec": "sec",
    "csc": "csc",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "log": "log",
    "ln": "log",
    "exp": "exp",
}
_GREEK = {
    name: name
    for name in (
        "alpha beta gamma delta epsilon zeta eta theta iota kappa mu nu xi rho sigma tau "
        "phi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega"
    ).split()
}
_GREEK["lambda"] = "lamda"  # "lambda" is a Python keyword
_GREEK["varepsilon"], _GREEK["varphi"], _GREEK["vartheta"] = "epsilon", "phi", "theta"
_CONSTANTS = {"pi": "pi", "infty": "oo"}
_OPERATORS = {"cdot": "*", "times": "*", "div": "/"}


def _to_python(s: str) -> str | None:
    """Translate a canonical LaTeX expression into sympy input, or None when it uses
    anything outside a small whitelist (so nothing from a generation reaches ``eval``)."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+)\s?", s[i:])
            if m is None:
                return None
            name = m.group(1)
            i += m.end()
            if name in ("frac", "binom"):
                first = _braced(s, i)
                second = _braced(s, first[1]) if first else None
                if first is None or second is None:
                    return None
                a, b = _to_python(first[0]), _to_python(second[0])
                if a is None or b is None:
                    return None
                out.append(f"(({a})/({b}))" if name == "frac" else f" binomial({a},{b})")
                i = second[1]
            elif name == "sqrt":
                index = None
                if s[i : i + 1] == "[":
                    end = s.find("]", i)
                    index = _to_python(s[i + 1 : end]) if end > 0 else None
                    if index is None:
                        return None
                    i = end + 1
                group = _braced(s, i)
                arg = _to_python(group[0]) if group else None
                if group is None or arg is None:
                    return None
                out.append(f" sqrt({arg})" if index is None else f"(({arg})**(1/({index})))")
                i = group[1]
            elif name in _FUNCTIONS:
                out.append(f" {_FUNCTIONS[name]} ")
            elif name in _CONSTANTS:
                out.append(f" {_CONSTANTS[name]} ")
            elif name in _GREEK:
                out.append(f" {_GREEK[name]} ")
            elif name in _OPERATORS:
                out.append(_OPERATORS[name])
            else:
                return None
        elif ch == "{":
            group = _braced(s, i)
            inner = _to_python(group[0]) if group else None
            if group is None or inner is None:
                return None
            out.append(f"({inner})")
            i = group[1]
        elif ch == "^":
            out.append("**")
            i += 1
        elif ch.isascii() and ch.isalpha():
            out.append(f" {ch} ")  # single letters only: "xy" is x*y, never a Python name
            i += 1
        elif ch.isdigit() or ch in "+-*/()!. ":
            out.append(ch)
            i += 1
        elif ch in "[]":
            out.append("(" if ch == "[" else ")")
            i += 1
        else:
            return None
    text = "".join(out)
    if re.search(r"\(\s*\)", text):  # "f()" is a call, "()" an empty tuple: not math
        return None
    if "." in re.sub(r"\d*\.\d+|\d+\.", "0", text):  # a dot outside a number: attribute access
        return None
    return text


@lru_cache(maxsize=1)
def _sympy() -> tuple[Any, Any, Any, dict[str, Any]] | None:
    """sympy, its parser, transformations and the name table; None when not installed."""
    try:
        import sympy
        from sympy.parsing.sympy_parser import (
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )
    except ImportError:
        return None
    names: dict[str, Any] = {c: sympy.Symbol(c) for c in "abcdefghjklmnopqrstuvwxyz"}
    names.update({c: sympy.Symbol(c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})
    names["i"], names["e"] = sympy.I, sympy.E
    names.update({py: sympy.Symbol(py) for py in _GREEK.values()})
    names.update({"pi": sympy.pi, "oo": sympy.oo, "binomial": sympy.binomial})
    for py in set(_FUNCTIONS.values()) | {"sqrt"}:
        names[py] = getattr(sympy, py)
    transformations = standard_transformations + (implicit_multiplication_application,)
    return sympy, parse_expr, transformations, names


@lru_cache(maxsize=4096)
def _parse_sympy(s: str) -> Any:
    """The sympy expression of a canonical answer (an equation ``A=B`` becomes ``A-B``)."""
    tools = _sympy()
    if tools is None or len(s) > 300 or s.count("=") > 1:
        return None
    sympy, parse_expr, transformations, names = tools
    sides = [_to_python(side) for side in s.split("=")]
    if any(side is None or not side.strip() for side in sides):
        return None
    try:
        exprs = [
            parse_expr(
                side, local_dict=dict(names), transformations=transformations, evaluate=False
            )
            for side in sides
        ]
        for expr in exprs:
            if not isinstance(expr, sympy.Expr):
                return None
            _digits_bound(expr)
    except Exception:  # a parse failure or a huge value just means "not comparable"
        return None
    if len(exprs) == 2:
        return ("equation", sympy.Add(exprs[0], -exprs[1], evaluate=False))
    return ("expression", exprs[0])


_MAX_EXPONENT = 1e4  # largest power or factorial argument evaluated
_MAX_DIGITS = 1e6  # largest value evaluated, in decimal digits


def _digits_bound(expr: Any, depth: int = 0) -> float:
    """Rough upper bound on log10 of |expr| near the evaluation points.

    Raises OverflowError for things evalf cannot finish quickly (``9^{9^{9^9}}``,
    ``(10^{10})!``): a generation must not be able to stall scoring.
    """
    if depth > 60:
        raise OverflowError("expression nested too deeply")
    if expr.is_Integer:
        return math.log10(max(abs(int(expr)), 1))
    if expr.is_Rational:
        return math.log10(max(abs(int(expr.p)), 1))
    if expr.is_Number:
        return math.log10(max(abs(float(expr)), 1.0))
    if not expr.args:
        return 1.0  # symbols (evaluated at small values) and constants: pi, e, i
    args = [_digits_bound(a, depth + 1) for a in expr.args]
    name = type(expr).__name__
    if expr.is_Pow or name == "exp":
        base, exponent = (args[0], args[1]) if expr.is_Pow else (0.5, args[0])
        if exponent > math.log10(_MAX_EXPONENT):
            raise OverflowError("exponent too large")
        bound = max(base, 1.0) * 10**exponent
    elif name in ("factorial", "factorial2", "binomial", "gamma", "RisingFactorial"):
        if max(args) > math.log10(_MAX_EXPONENT):
            raise OverflowError("factorial argument too large")
        bound = _MAX_EXPONENT * math.log10(_MAX_EXPONENT)
    elif expr.is_Mul:
        bound = sum(args)
    else:
        bound = max(args) + 1.0
    if bound > _MAX_DIGITS:
        raise OverflowError("value too large")
    return bound


def too_large_to_evaluate(expr: Any) -> bool:
    """True when evaluating the sympy `expr` could stall (``9^{9^{9^9}}``, ``(10^{10})!``).

    For answers another parser produced (`anydistill.traces.verify` screens math-verify's
    parses with it where math-verify's SIGALRM timeout cannot run: outside the main thread).
    """
    try:
        _digits_bound(expr)
    except (OverflowError, AttributeError, TypeError, ValueError):
        return True  # not a sympy expression we can bound: do not evaluate it either
    return False


def _values(expr: Any, symbols: list[Any]) -> list[tuple[Any, Any]] | None:
    """``expr`` at three fixed points for its free symbols, as (real, imaginary) sympy Floats
    of 50 digits; None when undefined or not finite there."""
    out = []
    for trial in range(3):
        point = {sym: 1.37 + 0.61 * k + 0.29 * trial for k, sym in enumerate(symbols)}
        try:
            real, imag = expr.evalf(_DIGITS, subs=point).as_real_imag()
            real, imag = real.evalf(_DIGITS), imag.evalf(_DIGITS)
            if not (real.is_Float or real.is_zero) or not (imag.is_Float or imag.is_zero):
                return None
            if not (real.is_finite and imag.is_finite):
                return None
        except Exception:  # undefined, symbolic leftovers, overflow
            return None
        out.append((real, imag))
    return out


def _close(a: tuple[Any, Any], b: tuple[Any, Any], sign: int, tolerance: float) -> bool:
    """|a - sign*b| within ``tolerance`` relative to the larger magnitude (at least 1)."""
    gap = abs(a[0] - sign * b[0]) + abs(a[1] - sign * b[1])
    scale = max(1, abs(a[0]) + abs(a[1]), abs(b[0]) + abs(b[1]))
    return bool(gap <= tolerance * scale)


def _symbolic_equal(pred: str, ref: str) -> bool:
    """Numeric identity test of two expressions (equations: equal up to sign).

    Exact expressions must agree to 30 digits, so ``10^{10}+1`` != ``10^{10}``; when either
    side is written with a decimal point it is an approximation and a relative 1e-6 is
    enough (``0.5773503`` = ``\\frac{\\sqrt{3}}{3}``).
    """
    p, r = _parse_sympy(pred), _parse_sympy(ref)
    if p is None or r is None or p[0] != r[0]:
        return False
    tolerance = _REL_TOL if "." in pred or "." in ref else 1e-30
    try:
        symbols = sorted(p[1].free_symbols | r[1].free_symbols, key=str)
        pv, rv = _values(p[1], symbols), _values(r[1], symbols)
        if pv is None or rv is None:
            return p[0] == "expression" and _infinite_equal(p[1], r[1])
        signs = (1, -1) if p[0] == "equation" else (1,)
        return any(
            all(_close(a, b, sign, tolerance) for a, b in zip(pv, rv, strict=True))
            for sign in signs
        )
    except Exception:  # a comparison sympy cannot decide is not a match
        return False


def _infinite_equal(a: Any, b: Any) -> bool:
    """``\\infty`` = ``+\\infty`` and the like, where evaluation gives no finite number."""
    try:
        return bool(a.doit() == b.doit()) and a.doit().is_infinite is True
    except Exception:
        return False

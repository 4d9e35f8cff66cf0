"""Synthetic arithmetic word problems with worked solutions: the demo's task and data set.

Every record is ``{"prompt", "completion", "answer", "text"}`` with ``text = prompt +
completion``. The completion restates the start, then writes one ``a op b = c.`` step per
operation and ends with ``#### <answer>`` (GSM8K style), so `extract_answer` scores it and a
tiny character/BPE-level model can learn the step arithmetic. All text is ASCII, every
intermediate result is non-negative, and a seed always gives the same problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["DIFFICULTIES", "arithmetic_problems", "split_problems", "corpus_text"]


@dataclass(frozen=True)
class _Level:
    max_number: int  # counts and amounts are drawn from [2, max_number]
    max_factor: int  # multiplication operands are drawn from [2, max_factor]
    op_weights: tuple[float, float, float]  # probability of 1, 2, 3 operations


DIFFICULTIES: dict[str, _Level] = {
    "easy": _Level(max_number=49, max_factor=9, op_weights=(0.4, 0.4, 0.2)),
    "medium": _Level(max_number=99, max_factor=12, op_weights=(0.2, 0.4, 0.4)),
    "hard": _Level(max_number=499, max_factor=20, op_weights=(0.0, 0.4, 0.6)),
}

# (name, subject pronoun, possessive pronoun)
_PEOPLE = [
    ("Tom", "He", "his"),
    ("Sam", "He", "his"),
    ("Ben", "He", "his"),
    ("Leo", "He", "his"),
    ("Max", "He", "his"),
    ("Omar", "He", "his"),
    ("Ravi", "He", "his"),
    ("Jack", "He", "his"),
    ("Luis", "He", "his"),
    ("Noah", "He", "his"),
    ("Ann", "She", "her"),
    ("Mia", "She", "her"),
    ("Zoe", "She", "her"),
    ("Lily", "She", "her"),
    ("Emma", "She", "her"),
    ("Sara", "She", "her"),
    ("Nina", "She", "her"),
    ("Ella", "She", "her"),
    ("Maya", "She", "her"),
    ("Kate", "She", "her"),
]
# (object, container it comes in)
_OBJECTS = [
    ("apples", "baskets"),
    ("marbles", "bags"),
    ("stickers", "sheets"),
    ("cookies", "jars"),
    ("pencils", "boxes"),
    ("books", "shelves"),
    ("stamps", "albums"),
    ("coins", "jars"),
    ("shells", "buckets"),
    ("cards", "packs"),
    ("eggs", "cartons"),
    ("flowers", "vases"),
    ("toy cars", "boxes"),
    ("beads", "bags"),
    ("oranges", "crates"),
    ("crayons", "boxes"),
]
_GAIN = ["buys {n} more", "finds {n} more", "gets {n} more", "wins {n} more", "is given {n} more"]
_LOSS = ["gives away {n}", "loses {n}", "sells {n}", "gives {n} to a friend", "uses {n}"]
# (verb, past participle, unit) for rate problems: "reads 6 pages every day"
_ACTIVITIES = [
    ("reads", "read", "pages"),
    ("runs", "run", "miles"),
    ("saves", "saved", "dollars"),
    ("writes", "written", "words"),
    ("bakes", "baked", "cookies"),
    ("plants", "planted", "trees"),
    ("walks", "walked", "miles"),
    ("earns", "earned", "dollars"),
    ("folds", "folded", "paper cranes"),
    ("paints", "painted", "pictures"),
]
_ITEMS = ["pens", "notebooks", "toys", "cupcakes", "tickets", "hats", "balls", "kites"]


@dataclass
class _Problem:
    prompt_body: str  # the question without the "Question: " / "Answer:" frame
    steps: list[str]  # completion sentences, each ending with "."
    answer: int


def _num(rng: random.Random, level: _Level, low: int = 2, high: int | None = None) -> int:
    return rng.randint(low, max(low, level.max_number if high is None else high))


def _factor(rng: random.Random, level: _Level) -> int:
    return rng.randint(2, level.max_factor)


def _join_actions(actions: list[str]) -> str:
    """ "A", "A and then B", "A, then B, and then C"."""
    if len(actions) == 1:
        return actions[0]
    if len(actions) == 2:
        return f"{actions[0]} and then {actions[1]}"
    return ", then ".join(actions[:-1]) + f", and then {actions[-1]}"


def _add_sub_events(
    rng: random.Random, level: _Level, total: int, count: int
) -> tuple[list[str], list[str], int]:
    """``count`` gain/loss events on ``total``: (phrases, step sentences, final total)."""
    phrases, steps = [], []
    for _ in range(count):
        # Never take away more than there is, so results stay non-negative.
        if total >= 2 and rng.random() < 0.5:
            n = rng.randint(1, min(total, level.max_number))
            phrases.append(rng.choice(_LOSS).format(n=n))
            steps.append(f"{total} - {n} = {total - n}.")
            total -= n
        else:
            n = _num(rng, level)
            phrases.append(rng.choice(_GAIN).format(n=n))
            steps.append(f"{total} + {n} = {total + n}.")
            total += n
    return phrases, steps, total


def _possession(rng: random.Random, level: _Level, ops: int) -> _Problem:
    """Tom has 7 apples, buys 5 more, gives away 3 (optionally buys whole containers)."""
    name, he, _ = rng.choice(_PEOPLE)
    obj, box = rng.choice(_OBJECTS)
    start = _num(rng, level)
    steps = [f"{name} starts with {start} {obj}."]
    if ops >= 2 and rng.random() < 0.35:
        # One multiplication event costs two operations: k * m, then add it on.
        k, m = _factor(rng, level), _factor(rng, level)
        phrases, more, total = _add_sub_events(rng, level, start + k * m, ops - 2)
        phrases.insert(0, f"buys {k} {box} with {m} {obj} in each")
        steps += [f"{k} * {m} = {k * m}.", f"{start} + {k * m} = {start + k * m}."] + more
    else:
        phrases, more, total = _add_sub_events(rng, level, start, ops)
        steps += more
    body = (
        f"{name} has {start} {obj}. {he} {_join_actions(phrases)}. "
        f"How many {obj} does {name} have now?"
    )
    return _Problem(body, steps, total)


def _groups(rng: random.Random, level: _Level, ops: int) -> _Problem:
    """Mia has 4 bags with 6 marbles in each, then gains or loses some."""
    name, he, _ = rng.choice(_PEOPLE)
    obj, box = rng.choice(_OBJECTS)
    k, m = _factor(rng, level), _factor(rng, level)
    steps = [f"{name} has {k} {box} with {m} {obj} in each.", f"{k} * {m} = {k * m}."]
    body = f"{name} has {k} {box} with {m} {obj} in each."
    phrases, more, total = _add_sub_events(rng, level, k * m, ops - 1)
    if phrases:
        body += f" {he} {_join_actions(phrases)}."
    steps += more
    body += f" How many {obj} does {name} have now?"
    return _Problem(body, steps, total)


def _comparison(rng: random.Random, level: _Level, ops: int) -> _Problem:
    """Ann has 12 stickers; Ben has 5 more (fewer, k times as many); ask Ben or together."""
    (a_name, _, _), (b_name, _, _) = rng.sample(_PEOPLE, 2)
    obj, _ = rng.choice(_OBJECTS)
    kind = rng.choice(["more", "fewer", "times"])
    if kind == "times":
        a = _num(rng, level, high=min(level.max_number, 20))
        k = _factor(rng, level)
        b, relation, step = a * k, f"{k} times as many {obj} as {a_name}", f"{a} * {k}"
    elif kind == "fewer":
        a = _num(rng, level, low=4)
        d = rng.randint(2, a - 1)
        b, relation, step = a - d, f"{d} fewer {obj} than {a_name}", f"{a} - {d}"
    else:
        a, d = _num(rng, level), _num(rng, level)
        b, relation, step = a + d, f"{d} more {obj} than {a_name}", f"{a} + {d}"
    body = f"{a_name} has {a} {obj}. {b_name} has {relation}."
    steps = [f"{a_name} has {a} {obj}.", f"{b_name} has {step} = {b}."]
    if ops == 1:
        body += f" How many {obj} does {b_name} have?"
        return _Problem(body, steps, b)
    body += f" How many {obj} do {a_name} and {b_name} have together?"
    steps.append(f"Together they have {a} + {b} = {a + b}.")
    return _Problem(body, steps, a + b)


def _shopping(rng: random.Random, level: _Level, ops: int) -> _Problem:
    """Buying items at a unit price: the cost, the change, or the cost of two kinds."""
    name, he, _ = rng.choice(_PEOPLE)
    item, item2 = rng.sample(_ITEMS, 2)
    k, p = _factor(rng, level), _factor(rng, level)
    body = f"{name} buys {k} {item} that cost {p} dollars each."
    steps = [f"{k} * {p} = {k * p}."]
    if ops == 1:
        body += f" How many dollars does {he.lower()} spend?"
        return _Problem(body, steps, k * p)
    if ops == 2:
        paid = k * p + _num(rng, level, low=0)
        body += f" {he} pays with {paid} dollars. How many dollars of change does {name} get?"
        steps.append(f"{paid} - {k * p} = {paid - k * p}.")
        return _Problem(body, steps, paid - k * p)
    j, q = _factor(rng, level), _factor(rng, level)
    body += (
        f" {he} also buys {j} {item2} that cost {q} dollars each."
        f" How many dollars does {name} spend in all?"
    )
    steps += [f"{j} * {q} = {j * q}.", f"{k * p} + {j * q} = {k * p + j * q}."]
    return _Problem(body, steps, k * p + j * q)


def _rate(rng: random.Random, level: _Level, ops: int) -> _Problem:
    """Sam reads 6 pages every day for 4 days (plus earlier work, or a second pace)."""
    name, he, _ = rng.choice(_PEOPLE)
    verb, done, unit = rng.choice(_ACTIVITIES)
    p, d = _factor(rng, level), _factor(rng, level)
    if ops == 3:
        q, e = _factor(rng, level), _factor(rng, level)
        body = (
            f"{name} {verb} {p} {unit} every day for {d} days, and then {q} {unit} every day "
            f"for {e} more days. How many {unit} is that in all?"
        )
        steps = [
            f"{p} * {d} = {p * d}.",
            f"{q} * {e} = {q * e}.",
            f"{p * d} + {q * e} = {p * d + q * e}.",
        ]
        return _Problem(body, steps, p * d + q * e)
    body = f"{name} {verb} {p} {unit} every day for {d} days."
    steps = [f"{p} * {d} = {p * d}."]
    if ops == 1:
        body += f" How many {unit} is that in all?"
        return _Problem(body, steps, p * d)
    before = _num(rng, level)
    body += f" {he} had already {done} {before} {unit} before that. How many {unit} is that in all?"
    steps.append(f"{before} + {p * d} = {before + p * d}.")
    return _Problem(body, steps, before + p * d)


# Each template with the operation counts it can produce.
_TEMPLATES: list[tuple[Callable[[random.Random, _Level, int], _Problem], tuple[int, ...]]] = [
    (_possession, (1, 2, 3)),
    (_groups, (1, 2, 3)),
    (_comparison, (1, 2)),
    (_shopping, (1, 2, 3)),
    (_rate, (1, 2, 3)),
]


# Worked solutions are phrased in several equivalent ways, chosen at random, so the text has
# real entropy like natural language: one reference completion is then only a sample of the
# right distribution, which is where a teacher's soft targets carry more than the label.
_FIRST_STEP = ["{eq}.", "First, {eq}.", "We compute {eq}.", "Start with {eq}."]
_NEXT_STEP = ["{eq}.", "Then {eq}.", "So {eq}.", "Next, {eq}.", "That makes {eq}."]
_CLOSING = ["#### {a}", "The answer is {a}. #### {a}", "So the answer is {a}. #### {a}"]


def _phrase(steps: list[str], answer: int, rng: random.Random) -> str:
    sentences = []
    for i, step in enumerate(steps):
        if not step[0].isdigit():  # a plain statement ("Nina has 39 cookies.") stays as is
            sentences.append(step)
            continue
        pattern = rng.choice(_FIRST_STEP if i == 0 else _NEXT_STEP)
        sentences.append(pattern.format(eq=step.removesuffix(".")))
    sentences.append(rng.choice(_CLOSING).format(a=answer))
    return " ".join(sentences)


def _record(problem: _Problem, rng: random.Random) -> dict:
    prompt = f"Question: {problem.prompt_body}\nAnswer:"
    completion = " " + _phrase(problem.steps, problem.answer, rng) + "\n"
    return {
        "prompt": prompt,
        "completion": completion,
        "answer": str(problem.answer),
        "text": prompt + completion,
    }


def arithmetic_problems(n: int, seed: int, difficulty: str = "easy") -> list[dict]:
    """``n`` distinct arithmetic word problems with worked solutions, deterministic in ``seed``.

    ``difficulty`` is "easy" (numbers mostly under 50, factors up to 9), "medium" or "hard".
    Each record has "prompt" (ends with "Answer:"), "completion" (steps, then
    "#### <answer>\\n"), "answer" and "text" (prompt + completion). The first ``k`` problems
    of a call do not depend on ``n``.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    level = DIFFICULTIES[difficulty]
    rng = random.Random(seed)
    records: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"could not make {n} distinct {difficulty!r} problems; ask for fewer")
        ops = rng.choices((1, 2, 3), weights=level.op_weights)[0]
        candidates = [make for make, counts in _TEMPLATES if ops in counts]
        record = _record(rng.choice(candidates)(rng, level, ops), rng)
        if record["prompt"] not in seen:  # duplicates are skipped, not retried in place
            seen.add(record["prompt"])
            records.append(record)
    return records


def split_problems(
    n_train: int, n_eval: int, seed: int, difficulty: str = "easy"
) -> tuple[list[dict], list[dict]]:
    """(train, eval) problem lists with no prompt in common.

    Both come from one call, eval first, so the eval set depends only on ``n_eval`` and
    ``seed``: growing the training set never changes what the model is scored on.
    """
    problems = arithmetic_problems(n_eval + n_train, seed, difficulty)
    return problems[n_eval:], problems[:n_eval]


def corpus_text(records: Iterable[dict]) -> str:
    """All records' ``text`` fields joined into one training string (each ends in a newline)."""
    return "".join(r["text"] if r["text"].endswith("\n") else r["text"] + "\n" for r in records)

"""`anydistill generate`'s pipeline on tiny data: each stage's effect asserted exactly with a
fake teacher whose traces plant right answers in another LaTeX form, wrong answers, exact and
near duplicates, benchmark copies and a failing code solution; the config section; prompts
from messages data; and `train` reading the written traces.jsonl as prompt/completion data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_recipe

from anydistill.config import TraceGenConfig, config_from_dict, dump_config, resolve_paths
from anydistill.config.schema import DataConfig
from anydistill.errors import ConfigError, DataError
from anydistill.traces.pipeline import generate_traces
from anydistill.traces.prompts import load_prompts

LONG = (
    "Sara starts with twelve apples in her basket. She gives five of them to her brother, "
    "which leaves seven apples. Then she gives two apples to her sister, so seven minus two "
    "leaves five apples in the basket at the end of the day. #### 5"
)
LONG_NEAR = LONG.replace("brother", "cousin")  # one word changed: a near-duplicate
BENCH_Q1 = "A train leaves the station at noon traveling sixty miles per hour toward the city."
BENCH_Q2 = "How many marbles does Peter keep if he shares forty marbles equally among eight boys?"
SARA = (
    "Sara has 12 apples in a basket on the kitchen table. She gives 5 apples to her brother "
    "Tom and then she gives 2 apples to her little sister Ann after lunch. How many apples "
    "does Sara have left in the basket at the end of the day?"
)
ADD_TEST = "assert add(1, 2) == 3\nassert add(-4, 4) == 0"

# (record, the fake teacher's two samples for its prompt)
PLANTED: list[tuple[dict[str, Any], list[str]]] = [
    (  # 0: right in another form (1/2 for 0.5), and wrong
        {"prompt": "What is one half written as a decimal number?", "answer": "0.5"},
        ["Half is \\boxed{\\frac{1}{2}} in LaTeX form.", "I think it is \\boxed{0.6} here."],
    ),
    (  # 1: two exactly equal traces
        {"prompt": "Compute two plus three, then report the sum.", "answer": "5"},
        [LONG, LONG],
    ),
    (  # 2: the same prompt as 1 up to case and spaces
        {"prompt": "COMPUTE two plus three,   then report the sum.", "answer": "5"},
        ["Two and three make five. #### 5", "the sum is \\boxed{5} as computed"],
    ),
    ({"prompt": SARA, "answer": "5"}, [LONG_NEAR, "wrong: \\boxed{7}"]),  # 3: near 1's trace
    (  # 4: its second trace is too short
        {"prompt": "Sara had some apples; how many are left?", "answer": "5"},
        ["Seven take away two leaves five apples. #### 5", "\\boxed{5}"],
    ),
    (  # 5: a near copy of prompt 3
        {"prompt": SARA.replace("little", "younger"), "answer": "5"},
        ["She has five apples left. #### 5", "Five apples remain there. \\boxed{5}"],
    ),
    (  # 6: the prompt holds a benchmark question
        {"prompt": f"Solve this: {BENCH_Q1} When does it arrive?", "answer": "3"},
        ["It arrives at three. #### 3", "At 3 pm it is there. \\boxed{3}"],
    ),
    (  # 7: the first trace quotes a benchmark question
        {"prompt": "Peter has forty marbles to share; how many does each boy get?", "answer": "5"},
        [f"This looks like: {BENCH_Q2} Each gets five. #### 5", "Forty over eight: #### 5"],
    ),
    (  # 8: code; the first solution fails its tests
        {"prompt": "Write add(a, b).", "test": ADD_TEST, "entry_point": "add"},
        [
            "```python\ndef add(a, b):\n    return a - b\n```",
            "```python\ndef add(a, b):\n    return a + b\n```",
        ],
    ),
    ({"prompt": "Tell me a story about a cat."}, ["Once upon a time.", "A cat sat."]),  # 9
    (  # 10: the first trace is too long
        {"prompt": "What is three times three?", "answer": "9"},
        ["Nine. " * 80 + "\\boxed{9}", "Three threes are \\boxed{9} in total."],
    ),
]


class FakeTeacher:
    """The `sample` interface; answers from a table keyed by prompt, and counts calls."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[int, int | None]] = []

    def sample(
        self,
        prompts: Sequence[Any],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[list[str]]:
        self.calls.append((len(prompts), seed))
        return [self.table[p if isinstance(p, str) else p[-1]["content"]][:n] for p in prompts]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Any]:
    data = _write_jsonl(tmp_path / "prompts.jsonl", [r for r, _ in PLANTED])
    bench = _write_jsonl(tmp_path / "bench.jsonl", [{"question": BENCH_Q1}, {"question": BENCH_Q2}])
    teacher = FakeTeacher({r["prompt"]: s for r, s in PLANTED})
    return {"data": data, "bench": bench, "teacher": teacher}


def _cfg(data: Path, **generate: Any):
    recipe = tiny_recipe("traces")
    recipe["data"] = {"path": str(data)}
    recipe["generate"] = {"samples_per_prompt": 2, "batch_size": 4, **generate}
    return config_from_dict(recipe)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]


def test_every_stage_removes_exactly_what_was_planted(planted: dict, tmp_path: Path):
    cfg = _cfg(
        planted["data"],
        keep="correct",
        min_chars=12,
        max_chars=400,
        decontaminate={"benchmarks": [{"path": str(planted["bench"]), "name": "bench"}]},
    )
    out = tmp_path / "out"
    made = generate_traces(cfg, out, sampler=planted["teacher"], teacher="fake", progress=False)
    card = made.card
    stages = {s["stage"]: (s["prompts_out"], s["traces_out"]) for s in card["stages"]}
    assert stages == {
        "sample + verify": (11, 22),
        "filter": (10, 15),  # 3 incorrect, 2 unverified, 1 too short, 1 too long
        "dedup prompts": (8, 11),  # 2 (exact copy of 1), 5 (near copy of 3)
        "dedup traces": (7, 9),  # 1's second (exact), 3's first (near 1's); 3 is left empty
        "decontaminate prompts": (6, 7),  # 6
        "decontaminate traces": (6, 6),  # 7's first
        "max_per_prompt": (6, 6),
    }
    removed = card["removed"]
    assert removed["filter"] == [
        {"reason": "incorrect", "traces": 3},
        {"reason": "longer than max_chars", "traces": 1},
        {"reason": "shorter than min_chars", "traces": 1},
        {"reason": "unverified", "traces": 2},
    ]
    pairs = [(r["prompt"], r["duplicate_of"], r["kind"]) for r in removed["dedup prompts"]]
    assert pairs == [(2, 1, "exact"), (5, 3, "near")]
    assert 0.8 <= removed["dedup prompts"][1]["similarity"] < 1.0
    assert removed["dedup prompts"][0]["source"] == f"{planted['data']} line 3"
    traces = [
        (r["prompt"], r["sample"], r["duplicate_of"], r["kind"]) for r in removed["dedup traces"]
    ]
    assert traces == [
        (1, 1, {"prompt": 1, "sample": 0}, "exact"),
        (3, 0, {"prompt": 1, "sample": 0}, "near"),
    ]
    assert 0.8 <= removed["dedup traces"][1]["similarity"] < 1.0
    (prompt_hit,) = removed["decontaminate prompts"]
    assert (prompt_hit["prompt"], prompt_hit["benchmark"], prompt_hit["item"]) == (6, "bench", 0)
    assert prompt_hit["ngram"] == "a train leaves the station at noon traveling"
    (trace_hit,) = removed["decontaminate traces"]
    assert (trace_hit["prompt"], trace_hit["sample"], trace_hit["item"]) == (7, 0, 1)
    assert trace_hit["ngram"] == "how many marbles does peter keep if he"

    rows = _rows(out)
    assert [(r["source"].rsplit(" ", 1)[1], r["sample_index"]) for r in rows] == [
        ("1", 0),
        ("2", 0),
        ("5", 0),
        ("8", 1),
        ("9", 1),
        ("11", 1),
    ]
    assert {r["verified"] for r in rows} == {"correct"} and {r["teacher"] for r in rows} == {"fake"}
    assert [r["pass_rate"] for r in rows] == [0.5, 1.0, 1.0, 1.0, 0.5, 1.0]
    assert rows[0]["completion"] == "Half is \\boxed{\\frac{1}{2}} in LaTeX form."
    assert rows[3]["completion"] == "Forty over eight: #### 5"  # not the benchmark copy
    assert "return a + b" in rows[4]["completion"]  # the code that passes its tests
    assert card["verification"] == {
        "correct": 17,
        "incorrect": 3,
        "unverified": 2,
        "prompts_verified": 10,
        "prompts_unverified": 1,
        "prompts_0_of_2_correct": 0,
        "prompts_2_of_2_correct": 7,
        "mean_pass_rate": 0.85,
    }
    assert card["output"]["rows"] == 6 and made.rows == 6
    for name in ("card.json", "card.md", "pass_rate.png", "lengths.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "card.md").read_text()
    assert "## Removed by dedup traces" in md and "a train leaves the station" in md
    assert not list(out.rglob("*.tmp"))


def test_keep_all_labels_rows_and_the_cap_prefers_correct(planted: dict, tmp_path: Path):
    cfg = _cfg(
        planted["data"], keep="all", max_per_prompt=1, dedup={"prompts": False, "traces": False}
    )
    out = tmp_path / "out"
    generate_traces(cfg, out, sampler=planted["teacher"], teacher="fake", progress=False)
    rows = _rows(out)
    assert len(rows) == 11  # one per prompt
    by_line = {int(r["source"].rsplit(" ", 1)[1]): r for r in rows}
    assert (by_line[9]["sample_index"], by_line[9]["verified"]) == (1, "correct")  # code
    assert (by_line[10]["verified"], by_line[10]["pass_rate"]) == ("unverified", None)
    assert (by_line[4]["sample_index"], by_line[4]["verified"]) == (0, "correct")


def test_rerun_reuses_samples_and_other_settings_are_refused(planted: dict, tmp_path: Path):
    out = tmp_path / "out"
    teacher = planted["teacher"]
    generate_traces(_cfg(planted["data"]), out, sampler=teacher, teacher="fake", progress=False)
    assert [c[0] for c in teacher.calls] == [4, 4, 3]  # chunks of batch_size prompts
    assert len({c[1] for c in teacher.calls}) == 3  # a seed per chunk
    calls = len(teacher.calls)
    # Other filters: the stored samples are filtered again, nothing is sampled.
    made = generate_traces(
        _cfg(planted["data"], keep="all"), out, sampler=teacher, teacher="fake", progress=False
    )
    assert len(teacher.calls) == calls and made.card["settings"]["keep"] == "all"
    assert made.card["verification"]["correct"] == 17
    # A corrected answer: the stored traces of its prompt are verified again, not resampled.
    records = [dict(r) for r, _ in PLANTED]
    records[0]["answer"] = "0.6"
    _write_jsonl(planted["data"], records)
    made = generate_traces(
        _cfg(planted["data"], keep="all"), out, sampler=teacher, teacher="fake", progress=False
    )
    assert len(teacher.calls) == calls and made.card["verification"]["correct"] == 17
    first = [r for r in _rows(out) if r["source"].endswith(" line 1")]
    assert [r["verified"] for r in first] == ["incorrect", "correct"]
    before = (out / "traces.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="other prompts, teacher or sampling settings"):
        generate_traces(
            _cfg(planted["data"], temperature=0.9), out, sampler=teacher, teacher="fake"
        )
    assert (out / "traces.jsonl").read_bytes() == before


def test_nothing_correct_is_one_sentence_and_keeps_the_samples(tmp_path: Path):
    data = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2+2?", "answer": "4"}])
    teacher = FakeTeacher({"What is 2+2?": ["\\boxed{5}", "\\boxed{3}"]})
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        generate_traces(_cfg(data), out, sampler=teacher, teacher="fake", progress=False)
    assert str(err.value).startswith("generate.keep: none of the 2 traces was verified correct")
    assert "generate.keep=all" in str(err.value)
    assert not (out / "traces.jsonl").exists() and list((out / "samples").glob("*.jsonl"))


def test_a_failure_before_any_sample_leaves_no_folder(tmp_path: Path):
    data = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "answer": "4"}])
    out = tmp_path / "out"
    with pytest.raises(KeyError):  # the fake has no answer for this prompt: a "bug"
        generate_traces(_cfg(data), out, sampler=FakeTeacher({}), teacher="f", progress=False)
    assert not out.exists()


def test_config_section_checks():
    gen = TraceGenConfig()
    assert (gen.samples_per_prompt, gen.keep, gen.dedup.threshold, gen.decontaminate.n) == (
        4,
        "correct",
        0.8,
        8,
    )
    assert gen.decontaminate.benchmarks == []
    recipe = tiny_recipe("traces")
    recipe["generate"]["endpoint"] = {"url": "http://127.0.0.1:1", "model": "m"}
    recipe["generate"]["backend"] = "vllm"
    with pytest.raises(ConfigError, match="not both"):
        config_from_dict(recipe)
    del recipe["generate"]["backend"]
    cfg = config_from_dict(recipe)
    assert cfg.generate.endpoint.model == "m" and cfg.generate.backend is None
    # A run saves its config dumped and reads it back on resume: the section survives.
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert resolve_paths(cfg).generate == cfg.generate
    recipe["generate"]["dedupe"] = {}
    with pytest.raises(ConfigError, match="unknown key `generate.dedupe`"):
        config_from_dict(recipe)


def test_prompts_from_messages_and_a_system_prompt(tmp_path: Path):
    chat = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": "6 * 7 = 42. #### 42"},
    ]
    data = _write_jsonl(tmp_path / "m.jsonl", [{"messages": chat}])
    (item,) = load_prompts(DataConfig(path=str(data)), seed=0)
    assert item.prompt == chat[:1] and item.text == "What is 6 times 7?"
    assert item.record["answer"] == "6 * 7 = 42. #### 42"  # its own answer verifies traces
    with pytest.raises(ConfigError, match="^data.mode: `anydistill generate` needs prompts"):
        load_prompts(DataConfig(path=str(data), mode="text"), seed=0)
    teacher = FakeTeacher({"What is 6 times 7?": ["It is \\boxed{42}.", "\\boxed{41}"]})
    out = tmp_path / "out"
    cfg = _cfg(data, system_prompt="Think step by step.")
    generate_traces(cfg, out, sampler=teacher, teacher="fake", progress=False)
    (row,) = _rows(out)
    assert row["prompt"] == [{"role": "system", "content": "Think step by step."}, chat[0]]
    assert row["completion"] == [{"role": "assistant", "content": "It is \\boxed{42}."}]

    # `train` reads the chat rows as a conversation: the assistant's reply is the target.
    from anydistill.data.build import load_raw, tokenize_data
    from anydistill.models.tokenizer_training import train_tokenizer

    data_cfg = DataConfig(path=str(out / "traces.jsonl"), eval_fraction=0.0, seq_len=256)
    train, _ = load_raw(data_cfg, seed=0)
    tok = train_tokenizer(["Think step by step. What is 6 times 7? It is 42."], vocab_size=320)
    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    example = tokenize_data(train, train.select([]), tok, data_cfg).train[0]
    targets = [i for i, m in zip(example["input_ids"], example["loss_mask"], strict=True) if m]
    assert tok.decode(targets).startswith("It is \\boxed{42}.")


def test_train_reads_traces_as_prompt_completion(planted: dict, tmp_path: Path):
    from anydistill.data.build import load_raw, tokenize_data
    from anydistill.models.tokenizer_training import train_tokenizer

    out = tmp_path / "out"
    generate_traces(
        _cfg(planted["data"]), out, sampler=planted["teacher"], teacher="f", progress=False
    )
    data = DataConfig(path=str(out / "traces.jsonl"), eval_fraction=0.0, seq_len=256)
    train, _ = load_raw(data, seed=0)
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in train], vocab_size=320)
    tokenized = tokenize_data(train, train.select([]), tok, data)
    assert tokenized.mode == "prompt_completion" and len(tokenized.train) == len(train)
    first, example = train[0], tokenized.train[0]
    targets = [i for i, m in zip(example["input_ids"], example["loss_mask"], strict=True) if m]
    # Exactly the completion (and eos) are targets: the prompt is context.
    assert tok.decode(targets, skip_special_tokens=True) == first["completion"]

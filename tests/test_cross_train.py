"""Cross-tokenizer training end to end: each term, resume, accumulation, same-model zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_recipe, train_rows
from typer.testing import CliRunner

from anydistill.cli import app
from anydistill.config import CROSS_OPTIONS, config_from_dict
from anydistill.errors import ConfigError
from anydistill.train.loop import train

QUIET = dict(train__progress=False, output__report=False)


def _cfg(tmp_path: Path, name: str, **changes):
    return config_from_dict(
        tiny_recipe("cross_tokenizer_alm", output__dir=str(tmp_path / name), **QUIET, **changes)
    )


@pytest.mark.parametrize("kind", ["alm", "uld", "gold_hybrid", "mined"])
def test_each_cross_term_trains_a_student_with_its_own_tokenizer(tmp_path, kind):
    terms = [{"kind": kind}, {"kind": "ce", "weight": 0.5}]
    run = train(
        _cfg(
            tmp_path,
            kind,
            objective__terms=terms,
            train__max_steps=6,
            train__log_every=2,
            eval__every=3,
        )  # fmt: skip
    )
    rows = train_rows(run)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(r[f"term/{kind}"] >= 0 and r["term/ce"] > 0 for r in rows)
    final = json.loads((run / "eval.json").read_text())
    for key in ("student/bits_per_byte", "teacher/bits_per_byte", "chunk_agreement"):
        assert key in final
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(run / "final")
    assert len(saved) == len(AutoTokenizer.from_pretrained(run / "student_tokenizer"))
    assert len(saved) != len(AutoTokenizer.from_pretrained(run / "tokenizer"))


def test_eval_command_reproduces_the_final_eval(tmp_path):
    run = train(_cfg(tmp_path, "alm", train__max_steps=3, eval__every=0))
    got = CliRunner().invoke(app, ["eval", str(run), "--json"], catch_exceptions=False)
    assert got.exit_code == 0, got.output
    again = json.loads(got.stdout)
    final = json.loads((run / "eval.json").read_text())
    for key in ("student/bits_per_byte", "teacher/bits_per_byte", "chunk_agreement"):
        assert again[key] == pytest.approx(final[key], rel=1e-5)
    texts = tmp_path / "held.txt"
    texts.write_text("Tom has 3 apples and buys 4 more.\nHow many pens are left?\n")
    got = CliRunner().invoke(app, ["eval", str(run), "--json", "--texts", str(texts)])
    both = json.loads(got.stdout)
    assert both["student/text_bits_per_byte"] > 0 and both["teacher/text_bits_per_byte"] > 0


def test_exact_resume_is_bitwise(tmp_path):
    common = dict(train__max_steps=6, train__log_every=1, train__save_every=2, eval__every=3)
    full = train(_cfg(tmp_path, "full", **common))
    train(_cfg(tmp_path, "cut", train__stop_at_step=3, **common))
    resumed = train(_cfg(tmp_path, "cut", **common))
    keys = ("step", "loss", "lr", "grad_norm", "term/alm", "term/ce")
    a = [{k: r[k] for k in keys} for r in train_rows(full)]
    b = [{k: r[k] for k in keys} for r in train_rows(resumed)]
    assert a == b
    assert json.loads((full / "eval.json").read_text()) == json.loads(
        (resumed / "eval.json").read_text()
    )


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    def run(name, mbs, accum):
        return train_rows(
            train(
                _cfg(
                    tmp_path,
                    name,
                    train__max_steps=2,
                    train__log_every=1,
                    train__micro_batch_size=mbs,
                    train__grad_accum=accum,
                    eval__every=0,
                    train__max_grad_norm=None,
                    train__warmup_steps=0,
                )  # fmt: skip
            )
        )

    one, four = run("one", 8, 1), run("four", 2, 4)
    for a, b in zip(one, four, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["term/alm"] == pytest.approx(b["term/alm"], rel=1e-5)


@pytest.mark.parametrize("kind", ["alm", "uld", "gold_hybrid", "mined"])
def test_same_model_same_tokenizer_gives_zero(tmp_path, tiny_pair, kind):
    """The student is the teacher (same weights, same tokenizer): every cross term is ~0."""
    teacher_dir, _ = tiny_pair
    data = tiny_recipe(
        "cross_tokenizer_alm", output__dir=str(tmp_path / kind), **QUIET,
        train__max_steps=1, train__log_every=1, eval__every=0, train__warmup_steps=0,
            train__lr=1e-12,  # Adam would turn a 1e-7 gradient into a full-size step
    )  # fmt: skip
    data["teacher"] = {"path": str(teacher_dir)}
    data["student"] = {"path": str(teacher_dir)}
    data["objective"]["terms"] = [{"kind": kind}]
    run = train(config_from_dict(data))
    (row,) = train_rows(run)
    assert abs(row[f"term/{kind}"]) < 1e-6
    assert row["grad_norm"] < 1e-5
    final = json.loads((run / "eval.json").read_text())
    assert final["student/bits_per_byte"] == pytest.approx(final["teacher/bits_per_byte"], 1e-5)
    assert final["chunk_agreement"] == 1.0


def test_a_student_with_another_saved_tokenizer(tmp_path, tiny_pair):
    teacher_dir, other_dir = tiny_pair
    data = tiny_recipe(
        "cross_tokenizer_alm", output__dir=str(tmp_path / "pair"), **QUIET,
        train__max_steps=3, eval__every=0,
    )  # fmt: skip
    data["teacher"] = {"path": str(teacher_dir)}
    data["student"] = {"path": str(other_dir)}
    run = train(config_from_dict(data))
    assert train_rows(run)
    assert not (run / "student_tokenizer").exists()


@pytest.mark.parametrize(
    "change,match",
    [
        ({"objective__terms": [{"kind": "alm"}, {"kind": "fkl"}]}, "cannot mix"),
        ({"objective__terms": [{"kind": "uld", "options": {"debias": True}}]}, "does not take"),
        ({"objective__terms": [{"kind": "fkl", "options": {"x": 1}}]}, "only applies"),
        ({"source__kind": "student_generated"}, "source.kind"),
        ({"teacher": {"kind": "cache", "path": "/nope"}}, "teacher cache"),
    ],
)
def test_bad_cross_configs_are_one_sentence(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, "bad", **change)


def test_a_trained_student_tokenizer_needs_a_cross_term(tmp_path):
    with pytest.raises(ConfigError, match="student.tokenizer"):
        _cfg(tmp_path, "bad", objective__terms=[{"kind": "ce"}, {"kind": "fkl"}])


def test_alm_defaults_to_the_papers_tau(tmp_path):
    cfg = _cfg(tmp_path, "tau", objective__terms=[{"kind": "alm"}, {"kind": "mined"}])
    assert [t.temperature for t in cfg.objective.terms] == [100.0, 1.0]


def test_cross_options_match_the_loss_signatures():
    import inspect

    from anydistill.losses.cross import CROSS_TERMS

    internal = {"temperature", "beta", "block_rows", "teacher_space", "student_space"}
    internal |= {"matched", "mapping"}
    for kind, fn in CROSS_TERMS.items():
        params = inspect.signature(fn).parameters.values()
        keyword = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert set(CROSS_OPTIONS[kind]) == keyword - internal


def test_divergence_cross_terms_carry_the_temperature_squared(tmp_path):
    """mined at T = 2 is logged as weighted (T**2 in both) and differs from T = 1."""
    common = dict(train__max_steps=1, train__log_every=1, eval__every=0, train__warmup_steps=0)
    rows = {}
    for t in (1.0, 2.0):
        terms = [{"kind": "mined", "temperature": t}]
        run = train(_cfg(tmp_path, f"t{t}", objective__terms=terms, **common))
        (rows[t],) = train_rows(run)
    assert rows[2.0]["loss"] == pytest.approx(rows[2.0]["term/mined"], rel=1e-6)
    assert 0 < rows[2.0]["term/mined"] != pytest.approx(rows[1.0]["term/mined"], rel=1e-3)

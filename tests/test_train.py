"""End-to-end training on tiny recipes: run dir contents, resume, accumulation, padded heads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_recipe, train_rows
from typer.testing import CliRunner

from anydistill.cli import app
from anydistill.config import config_from_dict
from anydistill.train.loop import train

runner = CliRunner()


def test_tiny_fkl_recipe_from_the_cli(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", str(TINY / "fkl.yaml"), f"output.dir={out}", "train.progress=false"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "report.html", "final/config.json"):
        assert (out / name).exists(), name
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[-1]["loss"] < rows[0]["loss"]
    final = json.loads((out / "eval.json").read_text())
    for key in (
        "student/ce",
        "student/bits_per_byte",
        "teacher/ce",
        "kl_teacher_student",
        "top1_agreement",
    ):
        assert key in final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)
    evaluated = runner.invoke(app, ["eval", str(out), "--json"], catch_exceptions=False)
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout)
    assert again["student/ce"] == pytest.approx(final["student/ce"], rel=1e-4)
    assert 0.0 <= again["student/accuracy"] <= 1.0


@pytest.mark.parametrize(
    "name", ["rkl", "jsd", "tvd", "skl", "srkl", "taid", "ce_mix", "from_teacher", "lora"]
)
def test_each_tiny_recipe_trains(tmp_path, name):
    cfg = config_from_dict(
        tiny_recipe(
            name,
            output__dir=str(tmp_path / name),
            train__progress=False,
            train__max_steps=6,
            eval__every=0,
            output__report=False,
        )
    )
    run = train(cfg)
    rows = train_rows(run)
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run / "final" / "config.json").is_file()


def _resume_cfg(tmp_path: Path, name: str, **extra):
    return config_from_dict(
        tiny_recipe(
            "taid",
            output__dir=str(tmp_path / name),
            train__progress=False,
            train__max_steps=8,
            train__log_every=1,
            train__save_every=3,
            eval__every=4,
            output__report=False,
            data__packing=True,
            **extra,
        )
    )


def test_exact_resume_is_bitwise(tmp_path):
    full = train(_resume_cfg(tmp_path, "full"))
    stopped = train(_resume_cfg(tmp_path, "cut", train__stop_at_step=5))
    assert not (stopped / "final").exists()
    assert max(r["step"] for r in train_rows(stopped)) == 5
    # simulate a crash that logged past the checkpoint: resume must drop rows after step 5
    with (stopped / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "train", "step": 6, "loss": 123.0}\n{"kind": "tr')
    resumed = train(_resume_cfg(tmp_path, "cut"))
    keys = ("step", "loss", "lr", "grad_norm", "term/taid", "agreement")
    a = [{k: r[k] for k in keys} for r in train_rows(full)]
    b = [{k: r[k] for k in keys} for r in train_rows(resumed)]
    assert a == b
    fa = json.loads((full / "eval.json").read_text())
    fb = json.loads((resumed / "eval.json").read_text())
    assert fa == fb


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    def run(name, mbs, accum):
        cfg = config_from_dict(
            tiny_recipe(
                "ce_mix",
                output__dir=str(tmp_path / name),
                train__progress=False,
                train__max_steps=2,
                train__log_every=1,
                train__micro_batch_size=mbs,
                train__grad_accum=accum,
                eval__every=0,
                output__report=False,
                train__max_grad_norm=None,
                train__warmup_steps=0,
            )
        )
        return train_rows(train(cfg))

    one, four = run("one", 8, 1), run("four", 2, 4)
    for a, b in zip(one, four, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["term/fkl"] == pytest.approx(b["term/fkl"], rel=1e-5)


def test_differently_padded_heads_just_work(tmp_path):
    """Like Qwen2.5-7B (152064 rows) vs 0.5B (151936): same tokenizer, padded heads differ."""
    data = tiny_recipe(
        output__dir=str(tmp_path / "pad"),
        train__progress=False,
        train__max_steps=3,
        eval__every=0,
        output__report=False,
    )
    data["teacher"]["init"]["vocab_size"] = 384 + 64
    data["student"]["init"]["vocab_size"] = 384 + 7
    run = train(config_from_dict(data))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows(run))

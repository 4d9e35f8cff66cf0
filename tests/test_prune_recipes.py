"""Pruning from a recipe: `student.from_teacher.prune` in training and `anydistill prune`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import TINY, tiny_recipe, train_rows
from transformers import AutoModelForCausalLM

from anydistill.config import config_from_dict
from anydistill.errors import ConfigError
from anydistill.train.loop import train

QUICK = dict(
    train__progress=False,
    train__max_steps=4,
    train__log_every=1,
    train__warmup_steps=0,
    eval__every=0,
    output__report=False,
    data__synthetic_size=120,
)


def _cfg(tmp_path, recipe, name, **changes):
    return config_from_dict(
        tiny_recipe(recipe, output__dir=str(tmp_path / name), **{**QUICK, **changes})
    )


def test_width_pruned_student_trains_resumes_exactly_and_keeps_its_plan(
    tmp_path, capfd, monkeypatch
):
    full = train(_cfg(tmp_path, "prune_width", "full"))
    shown = capfd.readouterr().err
    assert "hidden_size               64 -> 48" in shown  # the plan, told before training
    config = json.loads((full / "final" / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"]) == (48, 96)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    plan = json.loads((full / "pruned" / "prune_plan.json").read_text())
    assert len(plan["channels"]) == 48
    assert (full / "pruned" / "importance.json").is_file()
    AutoModelForCausalLM.from_pretrained(str(full / "final"))

    train(_cfg(tmp_path, "prune_width", "cut", train__stop_at_step=2))

    def scored_again(*args, **kwargs):
        raise AssertionError("the resume scored the teacher again instead of reusing pruned/")

    # The resume slices the same student from the plan its start saved.
    monkeypatch.setattr("anydistill.train.prune.compute_importance", scored_again)
    resumed = train(_cfg(tmp_path, "prune_width", "cut"))
    keys = ("step", "loss", "grad_norm", "term/fkl")
    assert [{k: r[k] for k in keys} for r in train_rows(full)] == [
        {k: r[k] for k in keys} for r in train_rows(resumed)
    ]


def test_depth_pruning_with_a_hidden_term(tmp_path):
    terms = [{"kind": "fkl"}, {"kind": "hidden", "weight": 0.5}]
    cfg = _cfg(tmp_path, "prune_depth", "depth", objective={"terms": terms})
    run = train(cfg)
    rows = train_rows(run)
    assert rows[0]["term/hidden"] > 0
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2


def test_a_target_of_the_teachers_own_shape_starts_as_the_teacher(tmp_path):
    """Keeping everything: the student's first-step KL to its teacher is exactly zero."""
    same = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4}
    cfg = _cfg(tmp_path, "prune_width", "same", student={"from_teacher": {"prune": same}},
               train__max_steps=1, train__lr=1e-12)  # fmt: skip
    rows = train_rows(train(cfg))
    assert rows[0]["term/fkl"] == pytest.approx(0.0, abs=1e-7)


def test_an_impossible_target_is_one_sentence_before_training(tmp_path):
    cfg = _cfg(
        tmp_path, "prune_width", "bad", student={"from_teacher": {"prune": {"hidden_size": 100}}}
    )
    with pytest.raises(ConfigError, match="hidden_size"):
        train(cfg)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_prune_needs_a_target(tmp_path):
    with pytest.raises(ConfigError, match="give the student's shape"):
        _cfg(tmp_path, "prune_width", "x", student={"from_teacher": {"prune": {"calibration": 8}}})
    with pytest.raises(ConfigError, match="exactly one of `layers`"):
        _cfg(tmp_path, "prune_width", "x",
             student={"from_teacher": {"layers": [0], "prune": {"hidden_size": 32}}})  # fmt: skip


def _prune_cli(tmp_path, out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "anydistill", "prune", str(TINY / "prune_depth.yaml"),
         "data.synthetic_size=120", "student.from_teacher.prune.calibration=16", *extra,
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_prune_command_saves_a_loadable_model_and_refuses_a_users_folder(tmp_path):
    out = tmp_path / "pruned"
    done = _prune_cli(tmp_path, out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "num_hidden_layers          4 -> 2" in done.stderr
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 2
    assert {"prune_plan.json", "importance.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    again = _prune_cli(tmp_path, out)  # its own earlier output may be replaced
    assert again.returncode == 0, again.stderr[-2000:]

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused = _prune_cli(tmp_path, mine)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --out:")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

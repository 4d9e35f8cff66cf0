"""Report additions: agreement by token frequency, and a drafter's speculative decoding."""

from __future__ import annotations

import json

import torch
from conftest import tiny_recipe
from test_bad_input import run_cli

from anydistill.config import config_from_dict
from anydistill.eval.frequency import agreement_by_frequency
from anydistill.train.loop import train


def test_agreement_by_frequency_buckets_by_rank():
    # token 7 is the most frequent (rank 1); tokens 100..119 share ranks 2..21.
    targets = torch.tensor([7] * 30 + list(range(100, 120)))
    agree = torch.tensor([True] * 30 + [False] * 20)
    got = agreement_by_frequency(agree, targets)
    assert abs(got["agree_freq/rank_1-10"] - 30 / 39) < 1e-6
    assert got["agree_freq/rank_11-100"] == 0.0
    assert "agree_freq/rank_101-1000" not in got
    assert agreement_by_frequency(agree[:0], targets[:0]) == {}


def test_report_shows_frequency_agreement_and_speculation(tmp_path):
    recipe = tiny_recipe(
        "fkl",
        output__dir=str(tmp_path / "run"),
        train__max_steps=2,
        train__warmup_steps=0,
        train__progress=False,
        eval__every=0,
    )
    run = train(config_from_dict(recipe))
    results = json.loads((run / "eval.json").read_text())
    assert any(k.startswith("agree_freq/") for k in results)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a} plus {a}"}) + "\n" for a in range(3)))
    teacher = tmp_path / "teacher"
    from anydistill.train.setup import build_parts

    parts = build_parts(config_from_dict(recipe), tmp_path / "b", torch.device("cpu"))
    parts.teacher_model.save_pretrained(teacher)
    parts.tokenizer.save_pretrained(teacher)
    args = ["speculate", "--target", str(teacher), "--drafter", str(run), "--data", str(prompts)]
    result = run_cli(*args, "--max-new-tokens", "8", "--gamma", "2", "--save", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "speculate.json").read_text())["gamma"] == 2
    assert run_cli("report", str(run)).exit_code == 0
    html = (run / "report.html").read_text()
    assert "plots/agreement_by_frequency.png" in html
    assert "plots/acceptance_by_position.png" in html and "Speculative decoding" in html

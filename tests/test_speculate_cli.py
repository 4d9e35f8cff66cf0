"""`anydistill speculate` end to end on saved tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from test_bad_input import fails_with, run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

KEYS = {"acceptance_rate", "mean_accepted", "speedup", "greedy_identical"}


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"question": f"What is {a} plus {a + 3}?"} for a in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _speculate(target, drafter, data, *extra):
    args = ["speculate", "--target", str(target), "--drafter", str(drafter), "--data", data]
    return run_cli(*args, "--max-new-tokens", "12", "--device", "cpu", *extra)


def test_self_drafting_accepts_everything(tiny_pair, tmp_path):
    teacher, _ = tiny_pair
    result = _speculate(teacher, teacher, _prompts(tmp_path), "--gamma", "3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert KEYS <= set(report)
    assert report["acceptance_rate"] == 1.0 and report["greedy_identical"] is True
    # Every call yields gamma accepted + the target's bonus token, except a prompt's last call
    # when eos or the token budget cuts it short.
    assert 3.0 < report["mean_accepted"] <= 4.0


def test_a_different_drafter_is_still_lossless(tiny_pair, tmp_path):
    teacher, _ = tiny_pair
    drafter = tmp_path / "drafter"
    model = AutoModelForCausalLM.from_pretrained(teacher)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(drafter)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(drafter)
    data = _prompts(tmp_path)
    for temperature in ("0", "0.8"):
        result = _speculate(teacher, drafter, data, "--temperature", temperature, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert report["greedy_identical"] is True
        assert 0.0 <= report["acceptance_rate"] < 1.0


def test_tokenizer_mismatch_and_bad_options(tiny_pair, tmp_path):
    teacher, other = tiny_pair
    data = _prompts(tmp_path)
    fails_with(_speculate(teacher, other, data), "target and drafter tokenizers differ")
    fails_with(_speculate(teacher, teacher, data, "--gamma", "0"), "--gamma 0")
    fails_with(_speculate(teacher, teacher, str(tmp_path / "none.jsonl")), "none.jsonl")


def test_positions_no_round_reached_are_null_not_nan(tiny_pair, tmp_path):
    """--max-new-tokens below --gamma: later draft positions are never proposed; the JSON
    stays valid (null, not NaN) and the text output shows a dash."""
    teacher, _ = tiny_pair
    args = ["--gamma", "6", "--max-new-tokens", "2"]
    result = _speculate(teacher, teacher, _prompts(tmp_path), *args, "--json")
    assert result.exit_code == 0, result.output
    rates = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert rates["acceptance_by_position"][0] == 1.0
    assert rates["acceptance_by_position"][-1] is None
    text = _speculate(teacher, teacher, _prompts(tmp_path), *args)
    assert text.exit_code == 0 and ", -" in text.output

"""`anydistill eval --task` scores a run's student (and teacher) by the task's own metric."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import tiny_recipe
from test_bad_input import fails_with, run_cli

from anydistill.config import config_from_dict
from anydistill.train.loop import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_tasks")
    recipe = tiny_recipe(
        "fkl",
        output__dir=str(root / "run"),
        train__max_steps=2,
        train__warmup_steps=0,
        train__progress=False,
        eval__every=0,
        output__report=False,
    )
    return train(config_from_dict(recipe)), root


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_exact_match_and_rouge_tasks(tiny_run):
    run, root = tiny_run
    math = _jsonl(
        root / "math.jsonl", [{"prompt": f"{a} plus 1 is", "answer": str(a + 1)} for a in range(5)]
    )
    result = run_cli("eval", str(run), "--task", math, "--max-new-tokens", "6", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["task/kind"] == "exact_match" and scores["task/n"] == 5
    assert 0.0 <= scores["student/task_score"] <= 1.0 and "teacher/task_score" in scores
    chat = _jsonl(root / "chat.jsonl", [{"prompt": "Say hi", "response": "hi there"}] * 3)
    result = run_cli(
        "eval", str(run), "--task", chat, "--max-new-tokens", "4", "--json", "--max-records", "2"
    )
    scores = json.loads(result.output)
    assert scores["task/kind"] == "rouge_l" and scores["task/n"] == 2


def test_task_and_lm_eval_errors(tiny_run):
    run, root = tiny_run
    fails_with(run_cli("eval", str(run), "--task", str(root / "none.jsonl")), "none.jsonl")
    if importlib.util.find_spec("lm_eval") is None:  # the bridge's own run needs the package
        fails_with(run_cli("eval", str(run), "--lm-eval", "hellaswag"), "pip install lm-eval")

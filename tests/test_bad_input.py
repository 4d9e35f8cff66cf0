"""Bad input gets one clear sentence naming the field, a non-zero exit, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from typer.testing import CliRunner

from anydistill.cli import app

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def fails_with(result, message: str) -> str:
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    assert message in errors[0], errors[0]
    return errors[0]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_config_file(tmp_path):
    fails_with(run_cli("train", str(tmp_path / "none.yaml")), "does not exist")


def test_unknown_key_in_override(tmp_path, write_recipe):
    path = write_recipe(tiny_recipe(output__dir=str(tmp_path / "run")))
    fails_with(
        run_cli("train", str(path), "train.learning_rate=1"), "unknown key `train.learning_rate`"
    )


def test_wrong_type(tmp_path, write_recipe):
    path = write_recipe(tiny_recipe(output__dir=str(tmp_path / "run")))
    fails_with(run_cli("train", str(path), "train.max_steps=many"), "`train.max_steps`")


def test_bad_override_syntax(tmp_path, write_recipe):
    path = write_recipe(tiny_recipe(output__dir=str(tmp_path / "run")))
    fails_with(run_cli("train", str(path), "train.max_steps"), "must look like")


def test_missing_data_file_leaves_nothing(tmp_path, write_recipe):
    out = tmp_path / "run"
    data = tiny_recipe(output__dir=str(out), data__path=str(tmp_path / "gone.jsonl"))
    del data["data"]["synthetic"]
    fails_with(run_cli("train", str(write_recipe(data))), "data.path")
    assert not out.exists()


def test_empty_dataset(tmp_path, write_recipe):
    out = tmp_path / "run"
    data = tiny_recipe(output__dir=str(out), data__path=str(_jsonl(tmp_path / "e.jsonl", [])))
    del data["data"]["synthetic"]
    fails_with(run_cli("train", str(write_recipe(data))), "empty")
    assert not out.exists()


def test_missing_columns(tmp_path, write_recipe):
    rows = [{"question": f"q{i}", "reply": f"a{i}"} for i in range(50)]
    data = tiny_recipe(
        output__dir=str(tmp_path / "run"), data__path=str(_jsonl(tmp_path / "c.jsonl", rows))
    )
    del data["data"]["synthetic"]
    fails_with(run_cli("train", str(write_recipe(data))), "data.text_column")


def test_sequence_longer_than_model(tmp_path, write_recipe):
    data = tiny_recipe(output__dir=str(tmp_path / "run"), data__seq_len=1024)
    fails_with(run_cli("train", str(write_recipe(data))), "data.seq_len is 1024")
    assert not (tmp_path / "run").exists()


def test_missing_model_directory(tmp_path, write_recipe):
    data = tiny_recipe(output__dir=str(tmp_path / "run"))
    data["teacher"] = {"path": str(tmp_path / "no-model"), "tokenizer": str(tmp_path / "no-model")}
    fails_with(run_cli("train", str(write_recipe(data))), "is not a directory")


def test_tokenizer_mismatch_points_to_cross_tokenizer(tmp_path, write_recipe, tiny_pair):
    teacher_dir, other_dir = tiny_pair
    data = tiny_recipe(output__dir=str(tmp_path / "run"))
    data["teacher"] = {"path": str(teacher_dir)}
    data["student"] = {"path": str(other_dir)}
    fails_with(run_cli("train", str(write_recipe(data))), "cross-tokenizer")


def test_output_dir_taken(tmp_path, write_recipe):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    fails_with(
        run_cli("train", str(write_recipe(tiny_recipe(output__dir=str(out))))), "did not write"
    )
    assert (out / "notes.txt").read_text() == "mine"


def test_nan_loss_names_step_and_term(tmp_path, write_recipe, tiny_pair):
    teacher_dir, _ = tiny_pair
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight[3, 0] = float("nan")
    poisoned = tmp_path / "poisoned"
    model.save_pretrained(poisoned)
    for f in teacher_dir.glob("tokenizer*"):
        (poisoned / f.name).write_bytes(f.read_bytes())
    for f in teacher_dir.glob("special_tokens*"):
        (poisoned / f.name).write_bytes(f.read_bytes())
    data = tiny_recipe(output__dir=str(tmp_path / "run"))
    data["teacher"] = {"path": str(poisoned)}
    data["objective"]["terms"] = [{"kind": "ce"}, {"kind": "fkl", "name": "kd"}]
    line = fails_with(run_cli("train", str(write_recipe(data))), "step 1: the loss is nan")
    assert "term `kd`" in line


def test_eval_of_non_run_dir(tmp_path):
    fails_with(run_cli("eval", str(tmp_path)), "config.yaml")


def test_report_of_non_run_dir(tmp_path):
    fails_with(run_cli("report", str(tmp_path / "x")), "does not exist")


@pytest.mark.parametrize("bad", ["cuda"])
def test_cuda_requested_without_gpu(tmp_path, write_recipe, bad):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    data = tiny_recipe(output__dir=str(tmp_path / "run"), train__device=bad)
    fails_with(run_cli("train", str(write_recipe(data))), "train.device")

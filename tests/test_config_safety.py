"""Recipe values the schema used to accept and that failed later (a traceback) or trained on
garbage (a silent wrong result): each is one sentence naming the key, exit 2, nothing made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import fails_cleanly, run_cli
from conftest import tiny_recipe

FAST = dict(
    train__max_steps=4,
    train__warmup_steps=1,
    train__progress=False,
    eval__every=0,
    eval__max_batches=1,
    output__report=False,
    data__synthetic_size=64,
)


def write(tmp_path: Path, name: str = "fkl", **changes) -> Path:
    path = tmp_path / "recipe.yaml"
    data = tiny_recipe(name, **{**FAST, "output__dir": str(tmp_path / "run"), **changes})
    path.write_text(yaml.safe_dump(data))
    return path


def fake_cache(tmp_path: Path, tiny_pair) -> Path:
    """A folder that passes for a cache until its manifest is read (enough for set-up)."""
    from transformers import AutoTokenizer

    cache = tmp_path / "cache"
    AutoTokenizer.from_pretrained(str(tiny_pair[0])).save_pretrained(str(cache / "tokenizer"))
    return cache


# (overrides, fragment of the message): each names the key and says what to do
CASES = {
    "betas above 1": (["train.betas=[0.9, 1.5]"], "`train.betas`: AdamW's betas"),
    "negative beta": (["train.betas=[-0.1, 0.9]"], "`train.betas`"),
    "negative seed": (["train.seed=-1"], "`train.seed`"),
    "seed too large": (["train.seed=4294967296"], "`train.seed`"),
    "tiny temperature": (["objective.terms.0.temperature=1e-30"], "temperature 1e-30 is outside"),
    "huge temperature": (["objective.terms.0.temperature=1e9"], "`objective.terms.0`"),
    "schedule typo": (
        ["objective.terms.0.schedule={kind: linear, strat: 0, end: 1}"],
        "unknown key `objective.terms.0.schedule.strat`: did you mean `start`?",
    ),
    "schedule kind": (
        ["objective.terms.0.schedule={kind: exp, start: 0, end: 1}"],
        "`objective.terms.0.schedule.kind`",
    ),
    "schedule steps": (
        ["objective.terms.0.schedule={kind: linear, start: 0, end: 1, steps: 0}"],
        "`objective.terms.0.schedule.steps`",
    ),
    "taid out of order": (
        ["objective.terms.0.kind=taid", "objective.terms.0.taid={t_start: 0.9, t_end: 0.5}"],
        "t_start (0.9) must not exceed t_end (0.5)",
    ),
    "taid total_steps": (
        ["objective.terms.0.kind=taid", "objective.terms.0.taid={total_steps: 5}"],
        "unknown key `objective.terms.0.taid.total_steps`",
    ),
    "taid on fkl": (["objective.terms.0.taid={t_start: 0.5}"], "only applies to a taid term"),
    "unknown alm divergence": (
        ["objective.terms=[{kind: alm, options: {divergence: wasserstein}}]"],
        "options.divergence",
    ),
    "negative alm eps": (
        ["objective.terms=[{kind: alm, options: {eps: -1}}]"],
        "options.eps",
    ),
    "unknown alm option": (
        ["objective.terms=[{kind: alm, options: {tau: 3}}]"],
        "alm does not take option `tau`",
    ),
    "output.dir is a file": (["output.dir={tmp}/recipe.yaml"], "output.dir"),
    "source.store is a file": (
        ["source.kind=teacher_generated", "source.store={tmp}/recipe.yaml"],
        "source.store",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_recipe_values(tmp_path, case):
    overrides, message = CASES[case]
    path = write(tmp_path)
    args = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    if case.startswith("source.store"):
        path = write(tmp_path, "seqkd")
    fails_cleanly(["train", path, *args], message, tmp_path)


def test_a_store_holding_other_files_is_refused(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "teacher.jsonl").write_text("my own file\n")
    path = write(tmp_path, "seqkd", source__store=str(store))
    fails_cleanly(["train", path], "holds files that are not teacher generations", tmp_path)


def test_terms_a_cache_cannot_serve_are_refused_before_loading(tmp_path, tiny_pair):
    cache = fake_cache(tmp_path, tiny_pair)
    path = write(tmp_path)
    line = fails_cleanly(
        [
            "train",
            path,
            "teacher={kind: cache, path: " + str(cache) + ", tail: renorm}",
            "objective.terms=[{kind: rkl}]",
            "eval.teacher=false",
            "student.init.vocab_size=384",
        ],
        "objective.terms.0",
        tmp_path,
    )
    assert "teacher.tail is renorm" in line


def test_triton_without_a_gpu(tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    path = write(tmp_path)
    fails_cleanly(["train", path, "objective.engine=triton"], "objective.engine", tmp_path)


def test_a_huge_learning_rate_stops_instead_of_saving_a_dead_model(tmp_path):
    for i, terms in enumerate(("[{kind: fkl}]", "[{kind: jsd}]", "[{kind: ce}]")):
        path = write(tmp_path, output__dir=str(tmp_path / f"run{i}"))
        result = run_cli("train", path, "train.lr=1e6", f"objective.terms={terms}")
        line = [x for x in result.output.splitlines() if x.startswith("error: ")]
        assert result.exit_code == 2 and len(line) == 1, result.output
        assert "lower train.lr (now 1e+06)" in line[0]
        assert not (tmp_path / f"run{i}" / "final").exists()
        assert run_cli("train", path, "output.overwrite=true").exit_code == 0


def test_config_that_is_a_directory_or_not_utf8(tmp_path):
    fails_cleanly(["train", tmp_path], "is a directory", tmp_path)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(write(tmp_path).read_bytes().replace(b"arithmetic", b"arithm\xe9tic"))
    fails_cleanly(["train", bad], "is not UTF-8 text", tmp_path)


def test_config_from_stdin(tmp_path):
    path = write(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "anydistill", "train", "/dev/stdin", "train.max_steps=2"],
        input=path.read_text(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "final").is_dir()


def test_prompts_only_data_for_a_generating_source(tmp_path):
    prompts = [{"prompt": f"What is {i} plus {i}? ", "completion": ""} for i in range(64)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    path = write(
        tmp_path,
        "seqkd",
        data__path=str(data),
        data__synthetic=None,
        data__eval_fraction=0.0,
        source__generation={"max_new_tokens": 8, "batch_size": 16},
    )
    result = run_cli("train", path, "train.max_steps=2", "train.warmup_steps=0")
    assert result.exit_code == 0, result.output
    fails_cleanly(
        ["train", path, "source.kind=dataset", "output.dir={}".format(tmp_path / "x")],
        "records are empty",
        tmp_path,
    )


def test_saved_config_finds_its_files_from_another_directory(tmp_path, monkeypatch):
    """Relative paths in a recipe are saved resolved, so `anydistill eval RUN` works from
    anywhere."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rows = [{"text": f"{i} plus {i} is {2 * i}."} for i in range(120)]
    (project / "data" / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write(tmp_path, data__path="data/t.jsonl", data__synthetic=None)
    data = yaml.safe_load(path.read_text())
    data["output"]["dir"] = "runs/a"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(project)
    assert run_cli("train", path).exit_code == 0
    saved = yaml.safe_load((project / "runs" / "a" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(project / "data" / "t.jsonl")
    assert saved["output"]["dir"] == str(project / "runs" / "a")
    monkeypatch.chdir(tmp_path)
    result = run_cli("eval", project / "runs" / "a", "--json")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["cache", "{recipe}", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["train", "{recipe}", "--bogus"], "No such option: --bogus"),
        (["bench", "loss", "--chunk-size", "0"], "Invalid value for '--chunk-size'"),
    ],
)
def test_bad_arguments_are_one_line_with_the_reason(tmp_path, args, message):
    """click's usage panel becomes one `error:` line that names the option and the reason."""
    path = write(tmp_path)
    line = fails_cleanly([a.replace("{recipe}", str(path)) for a in args], message, tmp_path)
    assert "--help" in line

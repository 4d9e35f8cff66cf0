"""A run deletes only what it created: user files in output.dir survive every failure path,
`overwrite` clears only our own runs, and one directory holds one training at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_unchanged, fails_cleanly, fails_with, run_cli, tree_state
from conftest import tiny_recipe
from safetensors.torch import load_file

from anydistill.config import config_from_dict
from anydistill.train.loop import train

FAST = dict(
    train__max_steps=4,
    train__log_every=1,
    train__progress=False,
    eval__every=0,
    eval__max_batches=1,
    output__report=False,
    data__synthetic_size=64,
)


def plant_user_files(root: Path) -> None:
    """What a user's project folder holds: names that clash with ours, and others."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "tokenizer.json").write_text('{"mine": true}')
    (root / "config.yaml").write_text("my: own config\n")
    (root / "train.py").write_text("print('my code')\n")


def write(tmp_path: Path, name: str = "recipe.yaml", **changes) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tiny_recipe("fkl", **{**FAST, **changes})))
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["output.dir=."], "holds files that anydistill did not write"),
        (["output.dir=.", "data.synthetic=null", "data.path=gone.jsonl"], "did not write"),
        (["output.dir=.", "output.overwrite=true"], "refusing to clear"),
        (["output.dir=..", "output.overwrite=true"], "refusing to clear"),
        (["output.dir=sub", "output.overwrite=true"], "did not write"),
    ],
)
def test_user_files_survive(tmp_path, monkeypatch, overrides, message):
    project = tmp_path / "project"
    plant_user_files(project)
    plant_user_files(project / "sub")
    recipe = write(tmp_path)
    monkeypatch.chdir(project)
    fails_cleanly(["train", recipe, *overrides], message, tmp_path)


def test_a_failed_start_in_an_empty_user_dir_leaves_it_empty(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    recipe = write(tmp_path, output__dir=str(out), data__path=str(tmp_path / "gone.jsonl"))
    data = yaml.safe_load(recipe.read_text())
    del data["data"]["synthetic"]
    recipe.write_text(yaml.safe_dump(data))
    fails_cleanly(["train", recipe], "data.path", tmp_path, may_create=("recipe",))
    assert out.is_dir() and not any(out.iterdir())


def test_a_failed_start_removes_only_the_folders_it_made(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    recipe = write(tmp_path, output__dir=str(out), data__seq_len=1024)
    fails_cleanly(["train", recipe], "data.seq_len", tmp_path)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("what", ["a file", "under a file", "read-only"])
def test_output_dir_that_cannot_be_written(tmp_path, monkeypatch, what):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "run"}.get(what)
    if out is None:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "run"
        if os.geteuid() == 0:  # root may write anywhere: let the check see what a user would
            import anydistill.paths as paths

            real = paths.os.access
            monkeypatch.setattr(
                paths.os, "access", lambda p, m: False if Path(p) == locked else real(p, m)
            )
    recipe = write(tmp_path, output__dir=str(out))
    line = fails_cleanly(["train", recipe], "output.dir", tmp_path)
    assert {"a file": "is a file", "under a file": "is a file", "read-only": "not writable"}[
        what
    ] in line


def test_overwrite_clears_only_our_runs(tmp_path):
    out = tmp_path / "run"
    recipe = write(tmp_path, output__dir=str(out))
    assert run_cli("train", recipe).exit_code == 0
    assert (out / ".anydistill-run").is_file()
    (out / "notes.txt").write_text("mine")
    fails_cleanly(["train", recipe, "output.overwrite=true"], "not part of the run", tmp_path)
    (out / "notes.txt").unlink()
    # a replacing run that fails to start leaves the old run exactly as it was
    before = tree_state(out)
    line = run_cli("train", recipe, "output.overwrite=true", "data.seq_len=1024")
    assert line.exit_code == 2
    assert_unchanged(before, out)
    # one that starts replaces it
    assert run_cli("train", recipe, "output.overwrite=true", "train.max_steps=3").exit_code == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]
    assert not (out / ".anydistill-replaced").exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".anydistill-run").write_text("{}")
    (out / ".anydistill-lock").write_text(json.dumps({"pid": 999999, "host": "gone"}))
    assert run_cli("train", write(tmp_path, output__dir=str(out))).exit_code == 0
    assert json.loads((out / ".anydistill-lock").read_text())["pid"] == os.getpid()


def _spawn(recipe: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "anydistill", "train", str(recipe), *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 120) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_two_runs_on_one_directory(tmp_path):
    """The second run is refused naming the first's pid; once the first is killed, its lock is
    free and a rerun resumes from the first's checkpoint."""
    out = tmp_path / "run"
    recipe = write(
        tmp_path,
        output__dir=str(out),
        train__max_steps=150,
        train__save_every=5,
        data__synthetic_size=200,
    )
    first = _spawn(recipe)
    try:
        started = _wait_for(lambda: (out / "checkpoints" / "step-5").is_dir(), first)
        if not started:
            pytest.skip(f"the first run did not reach a checkpoint: {first.stderr.read()[-500:]}")
        config = (out / "config.yaml").read_text()
        line = fails_with(run_cli("train", recipe, "train.lr=0.5"), f"pid {first.pid}")
        assert (out / "config.yaml").read_text() == config
        assert "in use by another training" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    result = run_cli("train", recipe)
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == list(range(1, 151))  # one run's log, whole, no rows of the refused one


@pytest.mark.slow
def test_killed_generation_then_an_unrelated_error_keeps_the_samples(tmp_path):
    """kill -9 during sequence-KD's upfront generation, a rerun that fails on a typo, then the
    same command again: samples kept throughout, final weights equal to an unbroken run."""
    common = dict(
        train__max_steps=3,
        data__synthetic_size=128,
        source__generation={"max_new_tokens": 16, "batch_size": 4},
        train__warmup_steps=0,
    )

    def seqkd(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        data = tiny_recipe("seqkd", **{**FAST, **common, "output__dir": str(tmp_path / name)})
        path.write_text(yaml.safe_dump(data))
        return path

    made = tmp_path / "cut" / "generated" / "teacher.jsonl"
    proc = _spawn(seqkd("cut"))
    got = _wait_for(lambda: made.is_file() and made.stat().st_size > 0, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not got:
        pytest.skip("generation finished or failed before the kill")
    lines = made.read_text().splitlines()
    assert 0 < len(lines) < 128
    before = tree_state(tmp_path / "cut")
    fails_cleanly(["train", seqkd("cut"), "data.seq_len=1024"], "data.seq_len", tmp_path)
    assert_unchanged(before, tmp_path / "cut")
    assert run_cli("train", seqkd("cut")).exit_code == 0
    train(config_from_dict(yaml.safe_load(seqkd("whole").read_text())))
    a = load_file(tmp_path / "cut" / "final" / "model.safetensors")
    b = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    whole = (tmp_path / "whole" / "generated" / "teacher.jsonl").read_text()
    assert made.read_text() == whole

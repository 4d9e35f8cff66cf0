"""`Stop it at any time and run the same command again`, kept: default checkpoints, damaged
checkpoints skipped, config changes refused or recorded, an honest metrics log, full disks,
Ctrl-C."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import fails_cleanly, fails_with, run_cli, tree_state
from conftest import tiny_recipe
from safetensors.torch import load_file

STEPS = 6
BASE = dict(
    train__max_steps=STEPS,
    train__save_every=2,
    train__log_every=1,
    train__warmup_steps=1,
    train__progress=False,
    eval__every=3,
    eval__max_batches=1,
    output__report=False,
    data__synthetic_size=64,
)


def recipe(tmp_path: Path, name: str, **changes) -> Path:
    path = tmp_path / f"{name}.yaml"
    data = tiny_recipe("fkl", **{**BASE, "output__dir": str(tmp_path / name), **changes})
    path.write_text(yaml.safe_dump(data))
    return path


def ok(*args) -> str:
    result = run_cli("train", *args)
    assert result.exit_code == 0, result.output
    return result.output


def weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def comparable(run: Path) -> list[dict]:
    """The log without wall-clock columns."""
    drop = ("tokens_per_s", "elapsed_s", "train_s", "gen_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows(run)]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("unbroken")
    ok(recipe(tmp, "run"))
    return tmp / "run"


def test_every_run_checkpoints_by_default(tmp_path):
    data = tiny_recipe("fkl", output__dir=str(tmp_path / "run"), train__progress=False)
    assert data["train"].get("save_every") is None  # the shipped recipe relies on defaults
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    ok(path, "train.max_steps=3", "train.warmup_steps=1", "output.report=false")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-3"]


def test_checkpoints_by_the_clock(tmp_path):
    ok(recipe(tmp_path, "run", train__save_every=0, train__save_minutes=1e-9))
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-5", "step-6"]  # one per step, the newest keep_checkpoints=2


def test_stopped_then_resumed_log_equals_an_unbroken_one(tmp_path, unbroken):
    path = recipe(tmp_path, "run")
    ok(path, "train.stop_at_step=4")
    ok(path)
    assert comparable(tmp_path / "run") == comparable(unbroken)  # tokens keep counting
    assert same_weights(tmp_path / "run", unbroken)


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    path = recipe(tmp_path, "run")
    ok(path)
    before = tree_state(tmp_path / "run")
    ok(path)
    after = tree_state(tmp_path / "run")
    assert {k: v for k, v in after.items() if "lock" not in k} == {
        k: v for k, v in before.items() if "lock" not in k
    }


def _flip(path: Path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped weights": lambda d: _flip(d / "student.safetensors"),
    "flipped optimizer": lambda d: _flip(d / "trainer.pt"),
    "truncated optimizer": lambda d: (d / "trainer.pt").write_bytes(
        (d / "trainer.pt").read_bytes()[:1000]
    ),
    "deleted weights": lambda d: (d / "student.safetensors").unlink(),
    "broken state": lambda d: (d / "state.json").write_text("{"),
    "edited state": lambda d: (d / "state.json").write_text(
        (d / "state.json").read_text().replace('"step": 4', '"step": 5')
    ),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back(tmp_path, unbroken, damage, caplog):
    path = recipe(tmp_path, "run")
    ok(path, "train.stop_at_step=4")
    DAMAGE[damage](tmp_path / "run" / "checkpoints" / "step-4")
    with caplog.at_level("WARNING"):
        ok(path)
    assert "step-4 is unusable" in caplog.text
    assert same_weights(tmp_path / "run", unbroken)
    assert comparable(tmp_path / "run") == comparable(unbroken)


def test_no_usable_checkpoint_is_one_sentence(tmp_path):
    path = recipe(tmp_path, "run")
    ok(path, "train.stop_at_step=4")
    for step in (2, 4):
        _flip(tmp_path / "run" / "checkpoints" / f"step-{step}" / "trainer.pt")
    fails_cleanly(["train", path], "no checkpoint in", tmp_path)


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.lr=0.01", "train.lr (0.001, now 0.01)"),
        ("data.synthetic_size=80", "data.synthetic_size"),
        ("student.init.hidden_size=48", "student.init.hidden_size"),
        ("objective.terms.0.kind=rkl", "objective.terms.0.kind"),
        ("train.seed=3", "train.seed"),
    ],
)
def test_a_resume_refuses_changes_it_cannot_honour(tmp_path, override, names):
    path = recipe(tmp_path, "run")
    ok(path, "train.stop_at_step=4")
    line = fails_cleanly(["train", path, override], names, tmp_path)
    assert "cannot change mid-run" in line


def test_a_resume_records_what_it_may_change(tmp_path):
    path = recipe(tmp_path, "run")
    ok(path, "train.stop_at_step=4")
    ok(path, "train.max_steps=8", "eval.every=0")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 8 and saved["eval"]["every"] == 0
    change = [r for r in rows(tmp_path / "run") if r["kind"] == "config"]
    assert change == [
        {
            "kind": "config",
            "step": 4,
            "changed": {
                "eval.every": [3, 0],
                "train.max_steps": [6, 8],
            },
        }
    ]
    assert [r["step"] for r in rows(tmp_path / "run") if r["kind"] == "train"] == list(range(1, 9))


def test_a_resume_refuses_data_that_changed_on_disk(tmp_path):
    data_file = tmp_path / "d.jsonl"
    texts = [f"problem {i}: {i} plus {i} is {2 * i}." for i in range(80)]
    data_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    path = recipe(tmp_path, "run", data__path=str(data_file), data__synthetic=None)
    ok(path, "train.stop_at_step=4")
    data_file.write_text("".join(json.dumps({"text": t + " Yes."}) + "\n" for t in texts))
    fails_cleanly(["train", path], "training sequences differ", tmp_path)


def test_disk_full_while_saving_a_checkpoint(tmp_path, unbroken, monkeypatch):
    import anydistill.train.checkpoint as checkpoint

    real, calls = checkpoint.torch.save, []

    def full_on_second(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", full_on_second)
    path = recipe(tmp_path, "run")
    line = fails_with(run_cli("train", path), "disk full while writing")
    assert "trainer.pt" in line and "step-2 and older checkpoints are intact" in line
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-2"]
    monkeypatch.setattr(checkpoint.torch, "save", real)
    ok(path)
    assert same_weights(tmp_path / "run", unbroken)


def test_metrics_log_deleted_mid_run_is_written_again(tmp_path, unbroken, monkeypatch):
    import anydistill.train.loop as loop

    real, seen = loop.train_step, []

    def deleting_step(*args, **kwargs):
        seen.append(1)
        if len(seen) == 3:
            (tmp_path / "run" / "metrics.jsonl").unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", deleting_step)
    ok(recipe(tmp_path, "run"))
    assert comparable(tmp_path / "run") == comparable(unbroken)


def test_ctrl_c_during_start_up_leaves_nothing(tmp_path, monkeypatch):
    import anydistill.train.start as start

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(start, "build_parts", interrupted)
    path = recipe(tmp_path, "run")
    before = tree_state(tmp_path)
    result = run_cli("train", path)
    assert result.exit_code == 130
    assert "stopped: interrupted before training began" in result.output
    assert tree_state(tmp_path) == before


@pytest.mark.slow
def test_ctrl_c_mid_run_saves_and_the_same_command_resumes(tmp_path):
    changes = dict(train__max_steps=80, train__save_every=0, data__synthetic_size=200)
    path = recipe(tmp_path, "cut", **changes)
    proc = subprocess.Popen(
        [sys.executable, "-m", "anydistill", "train", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().count('"train"') >= 3:
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the run ended before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped: stopped at step" in err
    saved = [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("step-")
    ok(path)
    ok(recipe(tmp_path, "whole", **changes))
    assert same_weights(tmp_path / "cut", tmp_path / "whole")
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "whole")


GENERATING = ("seqkd", "onpolicy", "mixture", "replay", "contrastive", "drafter_distillspec")


class Killed(BaseException):
    """What kill -9 leaves: no handler runs, only the kernel releases the lock."""


# server.yaml needs a served teacher: test_server_teacher.py serves one, trains the recipe and
# resumes a run the server broke.
SHIPPED = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "recipes" / "tiny").glob("*.yaml")
    if p.stem != "server"
)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_restart_after_a_kill_before_their_first_checkpoint(
    tmp_path, monkeypatch, name
):
    import anydistill.train.loop as loop
    from anydistill.config import config_from_dict
    from anydistill.train.loop import train

    def cfg(run: str):
        changes = {**BASE, "train__save_every": 0, "train__max_steps": 4, "eval__every": 2}
        changes["output__dir"] = str(tmp_path / run)
        if name in GENERATING:
            changes["source__generation"] = {"max_new_tokens": 8, "batch_size": 16}
        if name == "drafter_adaspec":  # its reference: a drafter run made first
            changes["objective__token_selection"] = {"reference": str(reference), "keep": 0.4}
        if name == "redi":  # it trains on verified traces: a file written here
            changes["data__path"] = str(traces)
        data = tiny_recipe(name, **changes)
        if data.get("stages"):  # staged: 4 steps in two stages of 2, which set max_steps
            data["train"].pop("max_steps")
            data["stages"] = [{**stage, "steps": 2} for stage in data["stages"][:2]]
        return config_from_dict(data)

    traces = tmp_path / "traces.jsonl"
    if name == "redi":
        from test_redi import write_traces

        write_traces(traces)

    reference = tmp_path / "reference"
    if name == "drafter_adaspec":
        spec = {**BASE, "train__max_steps": 2, "output__dir": str(reference)}
        train(config_from_dict(tiny_recipe("drafter_distillspec", **spec)))
    step = "train_step"
    real, calls = getattr(loop, step), []

    def dies_at_step_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, step, dies_at_step_three)
    with pytest.raises(Killed):
        train(cfg("cut"))
    assert not (tmp_path / "cut" / "checkpoints").exists()
    monkeypatch.setattr(loop, step, real)
    train(cfg("cut"))
    train(cfg("whole"))
    assert same_weights(tmp_path / "cut", tmp_path / "whole")
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "whole")


def test_killed_during_the_final_eval_then_rerun_logs_it_once(tmp_path, unbroken):
    """A kill after the last checkpoint but before final/ and eval.json: the rerun redoes
    only the end, and the log has one final eval row, as an unbroken run's."""
    import shutil

    path = recipe(tmp_path, "run")
    ok(path)
    shutil.rmtree(tmp_path / "run" / "final")
    (tmp_path / "run" / "eval.json").unlink()
    ok(path)
    assert comparable(tmp_path / "run") == comparable(unbroken)
    assert same_weights(tmp_path / "run", unbroken)

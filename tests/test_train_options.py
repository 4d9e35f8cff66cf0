"""Trainer options end to end: chat data, checkpointing, bf16, compile, loggers, a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe, train_rows

from anydistill.config import config_from_dict
from anydistill.errors import ConfigError
from anydistill.train.loop import train


def quick(tmp_path: Path, name: str, recipe: str = "fkl", **changes) -> dict:
    base = dict(
        output__dir=str(tmp_path / name),
        train__progress=False,
        train__max_steps=4,
        eval__every=0,
        output__report=False,
    )
    return tiny_recipe(recipe, **{**base, **changes})


def test_chat_messages_train_on_assistant_turns(tmp_path):
    from anydistill.data.synthetic import arithmetic_problems

    rows = [
        {
            "messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"].strip()},
            ]
        }
        for r in arithmetic_problems(120, seed=3)
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = quick(tmp_path, "chat", data__path=str(path), data__eval_fraction=0.1)
    del data["data"]["synthetic"]
    run = train(config_from_dict(data))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train_rows(run))
    tok_cfg = json.loads((run / "final" / "tokenizer_config.json").read_text())
    assert "chat_template" in tok_cfg or (run / "final" / "chat_template.jinja").exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"train__gradient_checkpointing": True},
        {"train__precision": "bf16"},
        {"objective__engine": "naive"},
    ],
    ids=["gradient_checkpointing", "bf16", "naive_engine"],
)
def test_training_options(tmp_path, changes):
    run = train(config_from_dict(quick(tmp_path, "opt", **changes)))
    rows = train_rows(run)
    assert len(rows) == 1 and torch.isfinite(torch.tensor(rows[0]["loss"]))


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    plain = train_rows(train(config_from_dict(quick(tmp_path, "a", train__log_every=1))))
    ckpt = train_rows(
        train(
            config_from_dict(
                quick(tmp_path, "b", train__log_every=1, train__gradient_checkpointing=True)
            )
        )
    )
    for x, y in zip(plain, ckpt, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_triton_engine_trains_like_the_torch_engine(tmp_path):
    """On CPU the kernel runs in Triton's interpreter (see conftest): same steps, same math."""
    pytest.importorskip("triton")
    changes = dict(train__log_every=1, train__max_steps=2, train__warmup_steps=0, data__seq_len=32)
    ref = train_rows(train(config_from_dict(quick(tmp_path, "t", **changes))))
    fused = train_rows(
        train(config_from_dict(quick(tmp_path, "k", objective__engine="triton", **changes)))
    )
    for x, y in zip(ref, fused, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_torch_compile_option(tmp_path):
    run = train(
        config_from_dict(quick(tmp_path, "compiled", train__compile=True, train__max_steps=3))
    )
    assert torch.isfinite(torch.tensor(train_rows(run)[-1]["loss"]))


def test_tensorboard_logger_or_clear_error(tmp_path):
    cfg = config_from_dict(quick(tmp_path, "tb", train__tensorboard=True))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="train.tensorboard"):
            train(cfg)
        return
    run = train(cfg)
    assert any((run / "tensorboard").iterdir())


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path):
    """A real kill -9 mid-run (after a checkpoint); rerunning the same command resumes."""
    changes = dict(
        train__max_steps=60,
        train__save_every=10,
        train__log_every=1,
        train__progress=False,
        eval__every=0,
        output__report=False,
        data__synthetic_size=600,
    )
    full_cfg = tmp_path / "full.yaml"
    full_cfg.write_text(
        yaml.safe_dump(tiny_recipe("fkl", output__dir=str(tmp_path / "full"), **changes))
    )
    cut_cfg = tmp_path / "cut.yaml"
    cut_cfg.write_text(
        yaml.safe_dump(tiny_recipe("fkl", output__dir=str(tmp_path / "cut"), **changes))
    )
    cmd = [sys.executable, "-m", "anydistill", "train"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        cmd + [str(cut_cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpts = tmp_path / "cut" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name == "step-20" for p in ckpts.iterdir()):
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if not killed:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    assert not (tmp_path / "cut" / "final").exists()
    resumed = subprocess.run(cmd + [str(cut_cfg)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    unbroken = subprocess.run(cmd + [str(full_cfg)], env=env, capture_output=True, text=True)
    assert unbroken.returncode == 0, unbroken.stderr[-2000:]
    keys = ("step", "loss", "lr", "grad_norm", "term/fkl")
    a = [{k: r[k] for k in keys} for r in train_rows(tmp_path / "full")]
    b = [{k: r[k] for k in keys} for r in train_rows(tmp_path / "cut")]
    assert [r["step"] for r in b] == list(range(1, 61))
    assert a == b

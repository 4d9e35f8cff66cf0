"""FSDP2 on two CPU processes (gloo): a sharded teacher and student train the global batch of one
process, checkpoint as torch distributed checkpoint shards, resume exactly and save a `final/`
that `from_pretrained` loads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe, train_rows
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
COMMON = dict(
    train__progress=False,
    train__max_steps=6,
    train__log_every=1,
    train__save_every=1,
    eval__every=0,
    eval__max_batches=2,
    output__report=False,
    train__device="cpu",
)


def _recipe(tmp_path: Path, name: str, **changes) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(tiny_recipe("fkl", output__dir=str(tmp_path / name), **COMMON, **changes))
    )
    return path


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_after(cmd: list[str], checkpoint: Path) -> bool:
    """Start `cmd` and kill -9 its whole process group once `checkpoint` exists; False when
    the run finished first."""
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not checkpoint.is_dir():
        time.sleep(0.01)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_and_resume_exactly(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    launch = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "anydistill", "train"]
    fsdp = {"train__micro_batch_size": 4, "train__distributed": {"strategy": "fsdp2"}}
    one = _recipe(tmp_path, "one", train__micro_batch_size=8)
    whole = _recipe(tmp_path, "fsdp", **fsdp)
    # The killed run also checkpoints activations and keeps gathered blocks: neither may change
    # a bit of the result.
    variant = {
        "strategy": "fsdp2",
        "reshard_after_forward": False,
        "teacher_reshard_after_forward": False,
    }
    broken = _recipe(
        tmp_path,
        "resumed",
        train__micro_batch_size=4,
        train__distributed=variant,
        train__gradient_checkpointing=True,
    )
    from anydistill.config import load_config
    from anydistill.train.loop import train

    train(load_config(one))  # one process, in this one
    _run([*launch, str(whole)])
    step2 = tmp_path / "resumed" / "checkpoints" / "step-2"
    assert _kill_after([*launch, str(broken)], step2), "the run ended before the kill"
    assert not (tmp_path / "resumed" / "final").exists()
    shards = sorted(p.name for p in (step2 / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (step2 / "student.safetensors").exists()
    sums = json.loads((step2 / "checksums.json").read_text())
    assert {"sharded/.metadata", "sharded/__0_0.distcp", "trainer.pt"} <= set(sums)
    _run([*launch, str(broken)])

    a, b = train_rows(tmp_path / "fsdp"), train_rows(tmp_path / "one")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # Killed (-9) after step 2's checkpoint, resumed from the shards: the same weights as the
    # unbroken run, bit for bit.
    keys = ("step", "loss", "grad_norm", "tokens", "lr", "agreement")
    assert [[r[k] for k in keys] for r in train_rows(tmp_path / "resumed")] == [
        [r[k] for k in keys] for r in a
    ]
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    unbroken = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert resumed.keys() == unbroken.keys()
    assert all(torch.equal(resumed[k], unbroken[k]) for k in resumed)

    from transformers import AutoModelForCausalLM

    sharded = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    single = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    ids = torch.arange(2, 30)[None]
    with torch.no_grad():
        torch.testing.assert_close(sharded(ids).logits, single(ids).logits, rtol=1e-4, atol=1e-5)
    eval_a = json.loads((tmp_path / "fsdp" / "eval.json").read_text())
    eval_b = json.loads((tmp_path / "one" / "eval.json").read_text())
    assert eval_a.keys() == eval_b.keys()
    for key in eval_a:
        assert eval_a[key] == pytest.approx(eval_b[key], rel=1e-4), key


def test_fsdp2_refusals():
    from anydistill.config import RunConfig

    def refused(**changes) -> str:
        data = tiny_recipe("fkl", train__distributed={"strategy": "fsdp2"}, **changes)
        with pytest.raises(ValueError) as err:
            RunConfig.model_validate(data)
        return str(err.value)

    assert "student.lora" in refused(student__lora={"r": 4})
    assert "train.compile" in refused(train__compile=True)
    assert "source.kind: `student_generated`" in refused(source__kind="student_generated")
    RunConfig.model_validate(tiny_recipe("fkl", train__distributed={"strategy": "fsdp2"}))


def test_the_70b_recipe_shards_both_models():
    from conftest import ROOT

    from anydistill.config import load_config

    cfg = load_config(ROOT / "recipes" / "llama3.1-70b-to-8b-fsdp2.yaml")
    assert cfg.train.distributed.strategy == "fsdp2"
    assert cfg.teacher.path == "meta-llama/Llama-3.1-70B-Instruct"
    assert cfg.train.precision == "bf16" and cfg.train.gradient_checkpointing

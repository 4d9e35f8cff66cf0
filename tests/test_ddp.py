"""Two CPU processes (gloo) train the same global batch as one process: same losses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe, train_rows


@pytest.mark.slow
# `hidden` carries a vocabulary term (fkl) beside the feature terms, so the plain path is in it.
@pytest.mark.parametrize("recipe", ["cross_tokenizer_alm", "hidden"])
def test_two_process_ddp_matches_single_process(tmp_path, recipe):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    common = dict(
        train__progress=False,
        train__max_steps=4,
        train__log_every=1,
        eval__every=0,
        output__report=False,
        train__device="cpu",
    )
    ddp_cfg = tmp_path / "ddp.yaml"
    ddp_cfg.write_text(
        yaml.safe_dump(
            tiny_recipe(
                recipe, output__dir=str(tmp_path / "ddp"), train__micro_batch_size=4, **common
            )
        )
    )
    one_cfg = tmp_path / "one.yaml"
    one_cfg.write_text(
        yaml.safe_dump(
            tiny_recipe(
                recipe, output__dir=str(tmp_path / "one"), train__micro_batch_size=8, **common
            )
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    ddp = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "anydistill",
            "train",
            str(ddp_cfg),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "anydistill", "train", str(one_cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = train_rows(tmp_path / "ddp"), train_rows(tmp_path / "one")
    assert [r["step"] for r in a] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
    assert (tmp_path / "ddp" / "final" / "config.json").is_file()


@pytest.mark.slow
def test_two_processes_refuse_a_foreign_directory_together(tmp_path):
    """Rank 0's refusal reaches rank 1 (no hang) and the user's folder is left untouched."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(yaml.safe_dump(tiny_recipe("fkl", output__dir=str(out), train__progress=False)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "anydistill", "train"]
    result = subprocess.run([*cmd, str(cfg)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.count("holds files that anydistill did not write") == 2
    # torchrun reports its failed children with a traceback of its own; none of ours
    assert not re.search(r'File ".*/anydistill/', result.stderr), result.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

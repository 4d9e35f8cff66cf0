"""The offline demo end to end (`--fast`, once, through the CLI), and its teacher cache and
determinism on a tiny setting in-process (a second CLI run would double the slowest test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_fast_demo_json_table(tmp_path):
    env = {
        "ANYDISTILL_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        # conftest's one thread per process: two threads on a shared 2-core machine thrash
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    cmd = [
        sys.executable,
        "-m",
        "anydistill",
        "demo",
        "--fast",
        "--json",
        "--workdir",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(done.stdout)
    assert set(table) == {"teacher", "student_kd", "student_ce"}
    for row in table.values():
        assert set(row) == {"bits_per_byte", "accuracy"}
        assert 0.0 < row["bits_per_byte"] < 8.0 and 0.0 <= row["accuracy"] <= 1.0
    # The story the demo tells: the teacher is best, distillation beats plain cross-entropy.
    assert table["teacher"]["bits_per_byte"] < table["student_kd"]["bits_per_byte"]
    assert table["student_kd"]["bits_per_byte"] < table["student_ce"]["bits_per_byte"]
    assert any((tmp_path / "cache" / "demo").glob("teacher-*/config.json"))


TINY = dict(
    n_train=120,
    n_student=48,
    n_eval=16,
    n_accuracy=4,
    vocab_size=300,
    seq_len=64,
    teacher_steps=6,
    student_steps=4,
    batch_size=4,
    teacher_dims=(32, 1, 2),
    student_dims=(16, 1, 2),
)


def test_a_rerun_reuses_the_cached_teacher_and_gives_the_same_table(tmp_path, monkeypatch):
    from anydistill.demo import run as demo

    monkeypatch.setenv("ANYDISTILL_CACHE", str(tmp_path / "cache"))
    settings = demo.DemoSettings(**TINY)
    first = demo.run_demo(workdir=tmp_path / "work", quiet=True, settings=settings)
    cached = list((tmp_path / "cache" / "demo").glob("teacher-*"))
    assert len(cached) == 1
    trained_at = (cached[0] / "config.json").stat().st_mtime_ns

    # The rerun may train the students but must not train the teacher: its folder stays as it was.
    second = demo.run_demo(workdir=tmp_path / "work", quiet=True, settings=settings)
    assert second == first
    assert (cached[0] / "config.json").stat().st_mtime_ns == trained_at
    assert len(list((tmp_path / "cache" / "demo").glob("teacher-*"))) == 1

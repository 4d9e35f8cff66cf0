"""The offline demo end to end (`--fast`), with a fresh teacher cache."""

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
    # The teacher was cached: a second run skips its training and gives the same table.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == table

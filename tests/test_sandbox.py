"""The code sandbox: limits hold, network is refused, HumanEval reference solutions pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from anydistill.eval.sandbox import (
    SandboxResult,
    humaneval_pass,
    humaneval_program,
    load_humaneval,
    run_program,
)


def _shared_data() -> Path:
    env = os.environ.get("ANYDISTILL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def test_passing_and_failing_programs() -> None:
    ok = run_program("def f(x):\n    return x + 1\n\nassert f(1) == 2\nprint('done')\n")
    assert ok == SandboxResult(True, "passed", "", ok.seconds) and ok.seconds < 10
    bad = run_program("assert 1 + 1 == 3, 'arithmetic'\n")
    assert (bad.passed, bad.status) == (False, "failed")
    assert "AssertionError: arithmetic" in bad.stderr_tail
    crash = run_program("raise KeyError('boom')\n")
    assert crash.status == "error" and "KeyError: 'boom'" in crash.stderr_tail
    assert run_program("def f(:\n").status == "error"


def test_early_exit_is_not_a_pass() -> None:
    assert run_program("import sys\nsys.exit(0)\nassert False\n").status == "error"
    assert run_program("import os\nos._exit(0)\nassert False\n").status == "error"


def test_infinite_loop_is_killed() -> None:
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert result.status == "timeout" and not result.passed
    assert 1.4 < result.seconds < 6
    sleeper = run_program("import time\ntime.sleep(60)\n", timeout_s=1)
    assert sleeper.status == "timeout" and sleeper.seconds < 5


def test_cpu_limit_is_a_timeout() -> None:
    result = run_program("while True:\n    pass\n", timeout_s=10, cpu_s=1)
    assert result.status == "timeout" and result.seconds < 6
    assert "CPU-time limit" in result.stderr_tail


def test_memory_bomb_is_stopped() -> None:
    grow = run_program("x = []\nwhile True:\n    x.append(' ' * 10**7)\n", memory_mb=256)
    assert grow.status == "memory" and not grow.passed
    huge = run_program("x = bytearray(8 * 1024**3)\n", memory_mb=256)
    assert huge.status == "memory"


def test_network_is_refused() -> None:
    code = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
        "except OSError as err:\n"
        "    assert 'disabled in the sandbox' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('connected')\n"
        "for call in (lambda: socket.socket(), lambda: socket.getaddrinfo('example.com', 80)):\n"
        "    try:\n"
        "        call()\n"
        "    except OSError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('not blocked')\n"
    )
    result = run_program(code)
    assert result.status == "passed", result.stderr_tail


def test_network_namespace_when_available() -> None:
    """Where unprivileged (or root) network namespaces work, the program gets its own."""
    if shutil.which("unshare") is None or (
        subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0
    ):
        pytest.skip("network namespaces are not available here; only the socket block applies")
    outer = os.readlink("/proc/self/ns/net")
    code = (
        "import os\n"
        f"assert os.readlink('/proc/self/ns/net') != {outer!r}\n"
        "interfaces = [line.split(':')[0].strip() for line in open('/proc/net/dev')][2:]\n"
        "assert interfaces == ['lo'], interfaces\n"
    )
    result = run_program(code)
    assert result.status == "passed", result.stderr_tail


def test_working_directory_is_temporary_and_removed() -> None:
    code = (
        "import os, sys\n"
        "assert os.listdir('.') == []\n"
        "open('scratch.txt', 'w').write('x')\n"
        "sys.stderr.write(os.getcwd())\n"
        "assert set(os.environ) <= {'PATH', 'LANG', 'HOME'}, dict(os.environ)\n"
        "assert sys.flags.isolated\n"
    )
    result = run_program(code)
    assert result.status == "passed", result.stderr_tail
    assert "anydistill-sandbox-" in result.stderr_tail
    assert not Path(result.stderr_tail.strip()).exists()


def test_humaneval_program_layout() -> None:
    record = {
        "prompt": "def add(a, b):\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
        "entry_point": "add",
    }
    assert humaneval_program(record, "    return a + b\n").endswith("check(add)\n")
    assert humaneval_pass(record, "    return a + b\n").passed
    assert humaneval_pass(record, "    return a - b\n").status == "failed"
    assert humaneval_pass(record, "    while True: pass\n", timeout_s=1).status == "timeout"


def test_humaneval_canonical_solutions_pass() -> None:
    folder = _shared_data() / "humaneval"
    files = sorted(folder.glob("*.jsonl*")) if folder.is_dir() else []
    if not files:
        pytest.skip(
            f"HumanEval data not found at {folder} (set ANYDISTILL_SHARED_DATA to the folder "
            "holding humaneval/)"
        )
    records = load_humaneval(files[0])
    assert len(records) == 164
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda r: humaneval_pass(r, r["canonical_solution"], timeout_s=20), records)
        )
    failures = [
        (r["task_id"], res.status, res.stderr_tail[-300:])
        for r, res in zip(records, results, strict=True)
        if not res.passed
    ]
    assert not failures, failures
    # A wrong completion fails the real tests.
    wrong = humaneval_pass(records[0], "    return None\n")
    assert wrong.status in ("failed", "error") and not wrong.passed

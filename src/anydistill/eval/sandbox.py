"""Run model-written Python (HumanEval style) in a limited subprocess, to score code completions.

Each program runs in a fresh `python -I` (isolated mode: no PYTHON* variables, no user site,
no script directory on sys.path) with a minimal environment, in a temporary working directory
that is deleted afterwards. A small bootstrap runs first, in the child, before the program:

* limits (setrlimit, with hard limits the program cannot raise): address space
  (`memory_mb`; allocations beyond it raise MemoryError), CPU time (about the wall timeout),
  file size (64 MiB per file, which also caps stdout/stderr) and no core dumps;
* network: it tries `unshare(CLONE_NEWUSER | CLONE_NEWNET)` (then `CLONE_NEWNET` alone, which
  works as root). When that succeeds the process has its own network namespace with only a
  down loopback interface, so no connection can leave even through ctypes or a subprocess, and
  as a user-namespace member it holds no capabilities on the host. In every case it also
  replaces `socket.socket`, `socket.create_connection`, `socket.getaddrinfo` and the other
  constructors and resolvers (also in `_socket`) with functions that raise OSError.

The parent waits with a wall-clock timeout and then kills the whole process group.

Not blocked: reading and writing files the user may access outside the working directory
(there is no filesystem isolation), spawning subprocesses (they share the limits and the
namespace, and are killed with the group unless they start their own session), and, when the
namespace cannot be created (user namespaces disabled, seccomp), network access through
ctypes or a subprocess. Only the pure-Python socket block holds then. This protects against
accidents and sloppy model output, not against code written to escape; use a container or VM
for adversarial code.

The limits are set by the bootstrap, not by `preexec_fn`: `preexec_fn` can deadlock when the
parent has threads, and HumanEval is scored from a thread pool. The bootstrap runs before any
program code, so the effect is the same.

A program passes only when it runs to the end: the bootstrap then prints a random token that
the parent checks, so an early `exit(0)` or `os._exit(0)` is not a pass (code that goes looking
for the token in the bootstrap's globals can still forge one).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "memory", "error"]

_FAILED, _MEMORY, _ERROR = 81, 82, 83
_FILE_LIMIT = 64 * 1024 * 1024
_TAIL = 2000

_BOOTSTRAP = r"""
import os, sys
token = sys.stdin.readline().strip()
sys.stdin.close()
sys.stdin = open(os.devnull)
path = sys.argv[1]
memory, cpu, fsize, FAILED, MEMORY, ERROR = (int(x) for x in sys.argv[2:8])

def _namespace():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (0x10000000 | 0x40000000, 0x40000000):  # NEWUSER|NEWNET, NEWNET
            if libc.unshare(flags) == 0:
                return
    except Exception:
        pass

_namespace()
import resource
# CPU: SIGXCPU at the soft limit (a hard limit equal to it would send SIGKILL instead).
for name, soft, hard in (("RLIMIT_AS", memory, memory), ("RLIMIT_CPU", cpu, cpu + 1),
                         ("RLIMIT_FSIZE", fsize, fsize), ("RLIMIT_CORE", 0, 0)):
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (ValueError, OSError):
        pass

import socket, _socket

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")

for mod in (socket, _socket):
    for name in ("socket", "SocketType", "create_connection", "getaddrinfo", "socketpair",
                 "fromfd", "create_server", "gethostbyname", "gethostbyname_ex", "getnameinfo"):
        if hasattr(mod, name):
            setattr(mod, name, _no_network)
del mod, name, soft, hard

import traceback
source = open(path, encoding="utf-8").read()
scope = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
try:
    exec(compile(source, "program.py", "exec"), scope)
except MemoryError:
    scope = None
    os.write(2, b"MemoryError: the program exceeded the sandbox memory limit\n")
    os._exit(MEMORY)
except AssertionError:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(FAILED)
except SystemExit as exc:
    sys.stderr.write(f"the program exited (code {exc.code!r}) before it finished\n")
    sys.stderr.flush()
    os._exit(ERROR)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(ERROR)
sys.stdout.flush()
sys.stderr.flush()
os.write(1, ("\n" + token + "\n").encode())
os._exit(0)
"""


@dataclass
class SandboxResult:
    """What happened to one program: `passed` is True only for status 'passed'."""

    passed: bool
    status: Status
    stderr_tail: str
    seconds: float


def _tail(path: Path, size: int = _TAIL) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(code: int, timed_out: bool, finished: bool, seconds: float, cpu: int) -> Status:
    if timed_out or code == -signal.SIGXCPU:
        return "timeout"
    if code == 0:
        return "passed" if finished else "error"
    if code == _FAILED:
        return "failed"
    if code == -signal.SIGKILL:
        # Not sent by us: the CPU hard limit (only reachable after `cpu` s), else the OOM killer.
        return "timeout" if seconds >= cpu else "memory"
    if code == _MEMORY:
        return "memory"
    return "error"


def run_program(
    code: str,
    timeout_s: float = 10,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    env: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run `code` as a Python program under the limits above; an assertion error is 'failed'.

    Status: 'passed' (ran to the end), 'failed' (AssertionError: a test rejected it),
    'timeout' (wall clock or CPU limit), 'memory' (over `memory_mb`), 'error' (any other
    exception, a non-zero or early exit, a crash, too much output).
    """
    cpu = cpu_s if cpu_s is not None else int(timeout_s) + 1
    token = secrets.token_hex(16)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anydistill-sandbox-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        program = root / "program.py"
        program.write_text(code, encoding="utf-8")
        child_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
        child_env.update(env or {})
        args = [
            sys.executable,
            "-I",
            "-c",
            _BOOTSTRAP,
            str(program),
            str(memory_mb * 1024 * 1024),
            str(cpu),
            str(_FILE_LIMIT),
            str(_FAILED),
            str(_MEMORY),
            str(_ERROR),
        ]
        with (
            (root / "stdout").open("wb") as out,
            (root / "stderr").open("wb") as err,
        ):
            proc = subprocess.Popen(
                args,
                cwd=work,
                env=child_env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                assert proc.stdin is not None
                try:
                    proc.stdin.write((token + "\n").encode())
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # the program's children too, on every path
                proc.wait()
        seconds = time.perf_counter() - start
        finished = _tail(root / "stdout", 200).rstrip().endswith(token)
        status = _status(proc.returncode, timed_out, finished, seconds, cpu)
        stderr = _tail(root / "stderr")
    if status == "timeout" and timed_out:
        stderr += f"\n[sandbox] killed after the {timeout_s:g} s wall-clock limit"
    elif status == "timeout":
        stderr += f"\n[sandbox] killed at the {cpu} s CPU-time limit"
    elif proc.returncode == -signal.SIGXFSZ:
        stderr += f"\n[sandbox] killed for writing more than {_FILE_LIMIT >> 20} MiB to a file"
    return SandboxResult(status == "passed", status, stderr[-_TAIL:], seconds)


def humaneval_program(record: Mapping[str, str], completion: str) -> str:
    """The program HumanEval executes: prompt + completion + tests + check(entry_point)."""
    return (
        record["prompt"]
        + completion
        + "\n\n"
        + record["test"]
        + "\n\n"
        + f"check({record['entry_point']})\n"
    )


def humaneval_pass(
    record: Mapping[str, str], completion: str, timeout_s: float = 10, memory_mb: int = 1024
) -> SandboxResult:
    """Whether `completion` of the HumanEval `record` passes its unit tests in the sandbox."""
    return run_program(humaneval_program(record, completion), timeout_s, memory_mb)


def load_humaneval(path: str | Path) -> list[dict]:
    """HumanEval records from its jsonl (or .jsonl.gz) file, as the upstream release ships it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

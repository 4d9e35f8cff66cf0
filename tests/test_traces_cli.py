"""`anydistill generate` end to end: the tiny recipe's model teacher (killed mid-way and rerun
to the same bytes, then `train` on what it wrote), a served teacher that fails mid-run, and
folders and files that are not ours."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cli_helpers import fails_cleanly, fails_with, run_cli
from conftest import TINY, tiny_recipe, train_rows
from test_traces_endpoint import MODEL, _Server

RECIPE = TINY / "traces.yaml"
OUTPUTS = ("traces.jsonl", "card.json", "card.md", "pass_rate.png", "lengths.png")


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny recipe's traces, generated in one go."""
    out = tmp_path_factory.mktemp("unbroken") / "traces"
    result = run_cli("generate", RECIPE, "--out", out)
    assert result.exit_code == 0, result.output
    assert "traces:" in result.output and "64 prompts" in result.output
    return out


def _generate(out: Path, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "anydistill", "generate", str(RECIPE), "--out", str(out)]
    return subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_a_kill_during_sampling_resumes_to_the_same_bytes(unbroken: Path, tmp_path: Path):
    out = tmp_path / "traces"
    proc = _generate(out, tmp_path)
    deadline = time.monotonic() + 120
    while not list((out / "samples").glob("chunk-*.jsonl")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no chunk was written"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    chunks = sorted(p.name for p in (out / "samples").glob("chunk-*.jsonl"))
    assert 1 <= len(chunks) < 8 and not (out / "traces.jsonl").exists()  # 64 prompts / 8

    rerun = _generate(out, tmp_path)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    for name in ("traces.jsonl", "card.json", "card.md"):
        assert (out / name).read_bytes() == (unbroken / name).read_bytes(), name
    for name in chunks:  # the chunks written before the kill were kept, not resampled
        assert (out / "samples" / name).read_bytes() == (unbroken / "samples" / name).read_bytes()
    assert not list(out.rglob("*.tmp"))


def test_the_recipe_trains_on_its_traces(unbroken: Path, tmp_path: Path):
    rows = [json.loads(x) for x in (unbroken / "traces.jsonl").read_text().splitlines()]
    assert {
        "prompt",
        "completion",
        "verified",
        "pass_rate",
        "teacher",
        "sample_index",
        "source",
    } == set(rows[0])
    assert rows[0]["teacher"] == "llama (random init)" and rows[0]["source"].startswith("synthetic")
    card = json.loads((unbroken / "card.json").read_text())
    assert card["output"]["rows"] == len(rows) and card["prompts"] == 64
    run_dir = tmp_path / "run"
    traces = unbroken / "traces.jsonl"
    result = run_cli(
        "train",
        RECIPE,
        "data.synthetic=null",
        f"data.path={traces}",
        f"output.dir={run_dir}",
        "train.max_steps=4",
        "eval.every=0",
        "output.report=false",
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "final" / "config.json").is_file()
    assert train_rows(run_dir)[-1]["step"] == 4
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["path"] == str(traces)


def test_a_users_folder_is_refused_untouched(tmp_path: Path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    fails_cleanly(
        ["generate", RECIPE, "--out", folder],
        f"--out: {folder} holds files that `anydistill generate` did not write (notes.txt)",
        tmp_path,
    )


def test_a_missing_benchmark_is_one_sentence_before_any_work(tmp_path: Path):
    out = tmp_path / "out"
    missing = tmp_path / "gsm8k.jsonl"
    fails_cleanly(
        [
            "generate",
            RECIPE,
            "--out",
            out,
            f"generate.decontaminate.benchmarks=[{{path: {missing}}}]",
        ],
        f"generate.decontaminate.benchmarks.0.path: {missing} does not exist",
        tmp_path,
    )


class _FailingServer(_Server):
    """The test endpoint's server, answering HTTP 500 from request `fail_after` + 1 on."""

    fail_after = 10**9

    @property
    def failures_left(self) -> int:  # read by the handler under the server's lock
        return 1 if len(self.requests) > self.fail_after else 0

    @failures_left.setter
    def failures_left(self, value: int) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_FailingServer]:
    import threading

    srv = _FailingServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _endpoint_recipe(tmp_path: Path, url: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
            for i in range(6)
        )
    )
    recipe = tiny_recipe("traces")
    recipe["data"] = {"path": str(prompts)}
    recipe["generate"] = {
        "endpoint": {"url": url, "model": MODEL, "retries": 0, "timeout": 5},
        "system_prompt": "Reason step by step.",
        "samples_per_prompt": 2,
        "batch_size": 2,
        "keep": "all",
        "dedup": {"traces": False},  # the server's two answers differ in one character
    }
    path = tmp_path / "endpoint.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_served_teacher_failing_mid_run_leaves_whole_chunks(
    server: _FailingServer, tmp_path: Path
):
    recipe = _endpoint_recipe(tmp_path, server.url)
    out = tmp_path / "out"
    server.fail_after = 2  # chunk 0 (two prompts) is answered, chunk 1 fails
    line = fails_with(
        run_cli("generate", recipe, "--out", out), "generate.endpoint.url: http://127.0.0.1"
    )
    assert "HTTP 500: engine overloaded" in line
    assert sorted(p.name for p in out.iterdir()) == [".anydistill-lock", "generate.json", "samples"]
    assert [p.name for p in (out / "samples").iterdir()] == ["chunk-000000.jsonl"]

    server.fail_after = 10**9
    sent = len(server.requests)
    assert run_cli("generate", recipe, "--out", out).exit_code == 0
    assert len(server.requests) - sent == 4  # only chunks 1 and 2
    fresh = tmp_path / "fresh"
    assert run_cli("generate", recipe, "--out", fresh).exit_code == 0
    assert (out / "traces.jsonl").read_bytes() == (fresh / "traces.jsonl").read_bytes()

    rows = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["teacher"] for r in rows} == {MODEL}
    system = {"role": "system", "content": "Reason step by step."}
    assert rows[0]["prompt"] == [system, {"role": "user", "content": "What is 0 plus 0?"}]
    # The test server answers "<last message>#<seed>/<index>": one seed per chunk.
    seeds = {r["completion"][0]["content"].split("#")[1].split("/")[0] for r in rows}
    assert len(seeds) == 3
    paths = {p for p, _, _ in server.requests}
    assert paths == {"/v1/chat/completions"}

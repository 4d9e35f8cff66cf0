"""The server teacher (`teacher.kind: server`) against a vLLM-like server on 127.0.0.1 that
serves a tiny model's real log-probs (tests/logprob_server.py).

At top_k = V it trains exactly as the live teacher does; at top_k = 20 as the offline cache
of the same k does (and `anydistill cache` fills that cache from the server as well); every
way the server can be wrong is one sentence with exit 2 and no run directory left behind; a
run the server fails in the middle resumes to the same weights as an unbroken one.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import fails_with, run_cli
from conftest import TINY, tiny_recipe, train_rows
from logprob_server import LogprobServer
from transformers import AutoModelForCausalLM

from anydistill.config import config_from_dict
from anydistill.config.kinds import serves
from anydistill.data import BatchStream
from anydistill.data.collate import collate
from anydistill.data.views import step_inputs
from anydistill.errors import ConfigError, ServerError
from anydistill.losses.sparse import refusal
from anydistill.models.tokenizer import load_tokenizer
from anydistill.teachers.cache.reader import TeacherCache
from anydistill.teachers.server import ServerTeacher
from anydistill.teachers.server_client import top_k_rows

NAME = "tiny-teacher"
V = 384  # the served tokenizer's vocabulary (conftest's tiny_pair teacher)


@pytest.fixture(scope="module")
def server(tiny_pair):
    teacher_dir, _ = tiny_pair
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    srv = LogprobServer(model, load_tokenizer(str(teacher_dir), field="t"), NAME).start()
    srv.teacher_dir = teacher_dir
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def healthy(request):
    """Every test starts with a healthy server, serving the right tokenizer."""
    if "server" not in request.fixturenames:
        yield
        return
    srv = request.getfixturevalue("server")
    srv.reset()
    yield
    srv.reset()
    srv.serve_tokenizer(load_tokenizer(str(srv.teacher_dir), field="t"))


def _changes(server: LogprobServer, out: Path, **changes) -> dict:
    base = dict(
        data__synthetic_size=48,
        data__seq_len=64,
        output__dir=str(out),
        output__report=False,
        train__progress=False,
        train__max_steps=3,
        train__warmup_steps=0,
        train__log_every=1,
        eval__every=0,
        teacher__url=server.url,
        teacher__tokenizer=str(server.teacher_dir),
    )
    return {**base, **changes}


def _recipe(server: LogprobServer, out: Path, **changes) -> dict:
    return tiny_recipe("server", **_changes(server, out, **changes))


def _as_model(data: dict, teacher_dir: Path) -> dict:
    """The same recipe with the served model as a live teacher (`teacher.kind: model`)."""
    return {**data, "teacher": {"path": str(teacher_dir)}}


def _losses(run: Path) -> list[float]:
    return [row["loss"] for row in train_rows(run)]


def test_top_k_v_trains_as_the_live_teacher(server, tmp_path):
    from anydistill.train.loop import train

    served = _recipe(server, tmp_path / "served", teacher__top_k=V)
    live = _as_model(_recipe(server, tmp_path / "live"), server.teacher_dir)
    a, b = _losses(train(config_from_dict(served))), _losses(train(config_from_dict(live)))
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-7)


def test_signal_rows_are_the_models_next_token_top_k_with_its_tail(server, tmp_path):
    tok = load_tokenizer(str(server.teacher_dir), field="t")
    teacher = ServerTeacher.connect(tok, "bucket", 64, server.url, NAME, 20, 10.0, 0, 4)
    texts = ["12 + 30 = 42", "a much longer line: 7 * 6 = 42, and 40 + 2 = 42 as well"]
    examples = [
        {"input_ids": ids, "loss_mask": [i % 3 != 0 for i in range(len(ids))]}
        for ids in (tok(t)["input_ids"] for t in texts)
    ]
    inputs = step_inputs(collate(examples, tok.pad_token_id), torch.device("cpu"))
    got = teacher.signal(inputs)
    with torch.no_grad():
        logits = server.model(inputs.input_ids, attention_mask=inputs.attention_mask).logits
    full = torch.log_softmax(logits[:, :-1][inputs.select].float(), dim=-1)
    top, ids = full.topk(20, dim=-1)
    tail = torch.logsumexp(full.scatter(1, ids, float("-inf")), dim=-1)
    assert torch.equal(got.ids, ids) and got.tail == "bucket"
    torch.testing.assert_close(got.logp, top, atol=2e-5, rtol=0)
    torch.testing.assert_close(got.log_tail, tail, atol=2e-5, rtol=0)
    teacher.close()


def test_top_20_matches_the_cache_of_the_same_k_and_fills_it(server, tmp_path, write_recipe):
    from anydistill.train.loop import train

    served = _recipe(server, tmp_path / "unused", teacher__top_k=20)
    for name, data in (("model", _as_model(served, server.teacher_dir)), ("server", served)):
        path = write_recipe(data, f"{name}.yaml")
        out = tmp_path / f"cache-{name}"
        result = run_cli("cache", path, "--k", "20", "--value-bits", "32", "--out", out)
        assert result.exit_code == 0, result.output
    from_model, from_server = (TeacherCache(tmp_path / f"cache-{n}") for n in ("model", "server"))
    assert from_server.manifest["teacher"] == {"server": NAME}
    assert from_model._where.keys() == from_server._where.keys()
    rows = [c.codec.decode(np.concatenate([c._shard(i) for i in range(len(c.manifest["shards"]))]))
            for c in (from_model, from_server)]  # fmt: skip
    assert torch.equal(rows[0][0], rows[1][0])  # the same top-20 ids, in the same order
    for a, b in zip(rows[0][1:], rows[1][1:], strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    cached = {**served, "teacher": {"kind": "cache", "path": str(tmp_path / "cache-model")}}
    cached["output"] = {**served["output"], "dir": str(tmp_path / "cached")}
    served["output"] = {**served["output"], "dir": str(tmp_path / "served")}
    a, b = _losses(train(config_from_dict(served))), _losses(train(config_from_dict(cached)))
    for x, y in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=2e-5)


def test_cache_from_a_capped_server_names_k(server, tmp_path, write_recipe):
    server.max_logprobs = 20
    out = tmp_path / "cache"
    result = run_cli(
        "cache", write_recipe(_recipe(server, tmp_path / "r")), "--k", "32", "--out", out
    )
    fails_with(result, "--k: the server refused 32 log-probs per token")
    assert not out.exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wrong_tokenizer(server: LogprobServer, other: Path, route: bool) -> None:
    server.serve_tokenizer(load_tokenizer(str(other), field="t"))
    server.tokenize_route = route


CASES = {
    "down": (
        lambda s, o: None,
        ["teacher.url=http://127.0.0.1:{port}/v1", "teacher.retries=0"],
        "teacher.url: cannot reach",
    ),
    "model": (lambda s, o: None, ["teacher.model=other-7b"], f"serves {NAME}, not other-7b"),
    "tokenizer": (
        lambda s, o: _wrong_tokenizer(s, o, True),
        [],
        "teacher.tokenizer: the server tokenizes a probe text",
    ),
    "decoded tokens": (
        lambda s, o: _wrong_tokenizer(s, o, False),
        [],
        "teacher.tokenizer: the server spells",
    ),
    "capped": (
        lambda s, o: setattr(s, "max_logprobs", 5),
        [],
        "teacher.top_k: the server refused 20 log-probs per token",
    ),
    "fewer": (
        lambda s, o: setattr(s, "short_by", 3),
        [],
        "teacher.top_k: the server returned 17 log-probs per token, fewer than the 20",
    ),
    "timeout": (
        lambda s, o: setattr(s, "delay", 1.0),
        ["teacher.timeout=0.3"],
        "teacher.timeout: http://127.0.0.1",
    ),
    "seq_len": (
        lambda s, o: setattr(s, "max_model_len", 32),
        [],
        "data.seq_len: the server's max_model_len is 32",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_server_that_cannot_teach_is_one_sentence_and_no_run_dir(
    server, tiny_pair, tmp_path, write_recipe, case
):
    prepare, overrides, message = CASES[case]
    prepare(server, tiny_pair[1])
    run = tmp_path / "run"
    recipe = write_recipe(_recipe(server, run))
    args = [a.format(port=_closed_port()) for a in overrides]
    start = time.perf_counter()
    line = fails_with(run_cli("train", recipe, *args), message)
    # Refused at start-up: well inside a minute even on a loaded machine (a retry loop or a
    # hang would not be).
    assert len(line) < 400 and time.perf_counter() - start < 60
    assert not run.exists()  # nothing half-written: the start was undone


def test_a_run_the_server_fails_midway_resumes_to_the_unbroken_weights(server, tmp_path):
    """16 sequences a step: the server dies after the probe and two steps' requests (step 3's,
    prefetched during step 2, fail); the run stops with one sentence after its step-2
    checkpoint, and resumed on a healthy server (reached another way: where and how a server
    is reached may change on resume) ends bitwise where an unbroken run does."""
    from test_resume_safety import comparable, same_weights

    from anydistill.train.checkpoint import checkpoint_problem
    from anydistill.train.loop import train

    def cfg(run: str, **more):
        changes = {"train__max_steps": 4, "train__save_every": 1, "teacher__retries": 0, **more}
        return config_from_dict(_recipe(server, tmp_path / run, **changes))

    train(cfg("whole"))
    assert server.peak > 1  # requests ran concurrently
    server.reset()
    server.fail_after = 1 + 2 * 16
    # One request at a time: the server sees them in the order they were asked for (with 16
    # threads a prefetched step-3 request could overtake a step-2 one on a loaded machine).
    with pytest.raises(ServerError, match=r"teacher\.url: .* kept failing \(HTTP 500: engine dead"):
        train(cfg("cut", teacher__max_concurrency=1))
    steps = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert steps == ["step-1", "step-2"]
    assert checkpoint_problem(tmp_path / "cut" / "checkpoints" / "step-2") is None
    server.reset()
    elsewhere = server.url.replace("127.0.0.1", "localhost")
    train(cfg("cut", teacher__url=elsewhere, teacher__max_concurrency=3, teacher__retries=2))
    assert same_weights(tmp_path / "cut", tmp_path / "whole")
    assert comparable(tmp_path / "cut") == comparable(tmp_path / "whole")


def test_prefetched_answers_arrive_while_the_caller_works(server, tmp_path):
    tok = load_tokenizer(str(server.teacher_dir), field="t")
    teacher = ServerTeacher.connect(tok, "renorm", 64, server.url, NAME, 20, 10.0, 0, 8)
    server.reset()
    server.delay = 0.25
    ids = [tok(f"{i} + {i} = {2 * i}")["input_ids"] for i in range(8)]
    batch = collate([{"input_ids": x, "loss_mask": [True] * len(x)} for x in ids], 0)
    teacher.prefetch([batch])
    # The caller trains meanwhile; the 8 requests go out at once, without it asking.
    deadline = time.monotonic() + 30
    while server.requests < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    # Sent side by side (all 8 at once on an idle machine; a loaded one may start them later).
    assert server.requests == 8 and server.peak >= 2
    signal = teacher.signal(step_inputs(batch, torch.device("cpu")))
    assert server.requests == 8  # the answers were already there: no request was repeated
    assert signal.tail == "renorm"
    teacher.close()


def test_peeking_the_stream_does_not_move_it():
    examples = [{"input_ids": [i, i + 1], "loss_mask": [False, True]} for i in range(10)]
    stream = BatchStream(examples, batch_size=3, seed=1)
    stream.next_batch()
    state = stream.state_dict()
    ahead = stream.peek(4)  # crosses into the next epoch
    assert stream.state_dict() == state
    assert ahead == [stream.next_batch() for _ in range(4)]


def test_top_k_rows_reads_vllms_format():
    positions = [
        None,
        {"7": {"logprob": -3.0, "rank": 9}, "2": {"logprob": -0.5, "rank": 1},
         "4": {"logprob": -1.0, "rank": 2}},
    ]  # fmt: skip
    ids, logp = top_k_rows(positions, 2, 10, "teacher")
    assert ids.tolist() == [[2, 4]] and logp.tolist() == [[-0.5, -1.0]]
    with pytest.raises(ServerError, match="returned 2 log-probs per token, fewer than the 3"):
        top_k_rows(positions, 3, 10, "teacher")
    with pytest.raises(ServerError, match="token id 4, outside this tokenizer's 4 ids"):
        top_k_rows(positions, 2, 4, "teacher")


def test_config_keeps_server_settings_on_a_server_teacher(tmp_path):
    server = {"kind": "server", "url": "http://h:8000/v1", "model": NAME, "tokenizer": "x"}

    def refused(message: str, **changes) -> None:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tiny_recipe("fkl", **changes))

    refused("`teacher`: `url` is a setting of a `kind: server` teacher only", teacher__url="h")
    refused("`student`: `top_k` is a setting of a `kind: server` teacher only", student__top_k=5)
    refused("needs `url`", teacher={"kind": "server", "model": NAME})
    refused("`init`: a `kind: server` teacher's weights stay", teacher={**server, "init": {}})
    refused("served teacher reads its own tokenizer", teacher={**server, "tokenizer": {}})
    refused("only the teacher can be a server", student=server)
    refused("eval.teacher scores a live teacher", teacher=server, eval__teacher=True)
    refused("objective.token_selection", teacher=server, objective__token_selection={})
    refused("not a server teacher", teacher=server, objective__terms=[{"kind": "uld"}])
    refused("samples from the teacher", teacher=server, source__kind="teacher_generated",
            data__mode="prompt_completion")  # fmt: skip
    cfg = config_from_dict(tiny_recipe("fkl", teacher=server, source__kind="student_generated"))
    assert cfg.teacher.server_settings()["top_k"] == 20 and cfg.eval.teacher is False
    assert serves("server", "rkl") and not serves("server", "contrastive")
    why = refusal("contrastive", 1.0, 0.5, 0.1, "bucket", "server")
    assert why is not None and why.startswith("a server teacher's top-k cannot serve")
    assert "renormalized" in (refusal("rkl", 1.0, 0.5, 0.1, "renorm", "server") or "")
    shipped = yaml.safe_load((TINY / "server.yaml").read_text())
    assert shipped["teacher"]["kind"] == "server"


def test_the_shipped_recipe_trains_from_the_cli(server, tmp_path):
    run = tmp_path / "run"
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in _changes(server, run).items()]
    overrides += ["train.max_steps=4", "data.seq_len=128", "data.synthetic_size=80"]
    result = run_cli("train", TINY / "server.yaml", *overrides)
    assert result.exit_code == 0, result.output
    assert len(train_rows(run)) == 4 and (run / "final").is_dir()

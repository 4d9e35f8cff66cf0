"""The OpenAI-compatible endpoint client, against a small server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from anydistill.errors import ConfigError, ModelError
from anydistill.traces.endpoint import EndpointConfig, EndpointSampler

MODEL = "teacher-7b"
KEY = "sk-test-secret-123"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        if getattr(self, "counted", False):  # done before the client can read the answer and
            self.counted = False  # send its next request, so `peak` sees only real overlap
            with self.server.lock:
                self.server.in_flight -= 1
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": m} for m in self.server.models]})
        else:
            self._send(404, {"error": {"message": "no such route"}})

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append((self.path, body, self.headers.get("Authorization")))
            srv.in_flight += 1
            srv.peak = max(srv.peak, srv.in_flight)
            self.counted = True
            fail = srv.failures_left > 0
            srv.failures_left -= 1
        try:
            time.sleep(srv.delay)
            if fail:
                return self._send(500, {"error": {"message": "engine overloaded"}})
            n = 1 if srv.ignore_n else body.get("n", 1)
            if self.path == "/v1/chat/completions":
                last = body["messages"][-1]["content"]
                message = {"role": "assistant", "content": f"{last}#{body.get('seed')}"}
                if srv.reasoning:
                    message["reasoning_content"] = "thinking"
                choices = [{"index": i, "message": {**message}} for i in reversed(range(n))]
                for c in choices:
                    c["message"]["content"] += f"/{c['index']}"
            elif self.path == "/v1/completions":
                choices = [{"index": i, "text": f"{body['prompt']}/{i}"} for i in range(n)]
            else:
                return self._send(404, {"error": {"message": "no such route"}})
            self._send(200, {"object": "completion", "choices": choices})
        finally:
            if self.counted:  # an answer that was never sent
                self.counted = False
                with srv.lock:
                    srv.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.models = [MODEL, "draft-1b"]
        self.requests: list[tuple[str, dict, str | None]] = []
        self.lock = threading.Lock()
        self.failures_left = 0
        self.delay = 0.0
        self.ignore_n = False
        self.reasoning = False
        self.in_flight = 0
        self.peak = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) breaks the pipe: not a failure

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _sampler(url: str, **overrides: Any) -> EndpointSampler:
    settings: dict[str, Any] = {"model": MODEL, "retries": 2, "backoff": 0.01, "timeout": 5.0}
    settings.update(overrides)
    return EndpointSampler(EndpointConfig(url=url, **settings))


def _one_sentence(message: str, field: str) -> None:
    assert message.startswith(f"endpoint.{field}") or message.startswith("endpoint:")
    assert "\n" not in message and len(message) < 400
    assert KEY not in message


def test_completions_and_chat_with_n_samples(server: _Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    sampler = _sampler(server.url + "/v1/", api_key_env="TEACHER_KEY")
    chat = [{"role": "user", "content": "hi"}]
    out = sampler.sample(["a", chat, "b"], n=3, temperature=0.7, max_tokens=16, seed=5)
    assert out == [["a/0", "a/1", "a/2"], ["hi#5/0", "hi#5/1", "hi#5/2"], ["b/0", "b/1", "b/2"]]
    paths = sorted(p for p, _, _ in server.requests)
    assert paths == ["/v1/chat/completions", "/v1/completions", "/v1/completions"]
    for _, body, auth in server.requests:
        assert body["model"] == MODEL and body["n"] == 3 and body["temperature"] == 0.7
        assert body["max_tokens"] == 16 and auth == f"Bearer {KEY}"


def test_a_server_that_ignores_n_is_asked_again_and_reasoning_is_kept(server: _Server):
    server.ignore_n, server.reasoning = True, True
    out = _sampler(server.url).sample([[{"role": "user", "content": "q"}]], n=2, seed=1)
    assert out == [["<think>\nthinking\n</think>\n\nq#1/0", "<think>\nthinking\n</think>\n\nq#2/0"]]


def test_a_500_succeeds_on_retry(server: _Server):
    server.failures_left = 1
    assert _sampler(server.url).sample(["x"], n=2) == [["x/0", "x/1"]]
    assert len(server.requests) == 2


def test_a_persistent_500_is_one_sentence(server: _Server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEACHER_KEY", KEY)
    server.failures_left = 100
    with pytest.raises(ModelError) as err:
        _sampler(server.url, api_key_env="TEACHER_KEY").sample(["x", "y"])
    message = str(err.value)
    _one_sentence(message, "url")
    assert "HTTP 500: engine overloaded" in message and "after 3 tries" in message


def test_a_timeout_is_one_sentence(server: _Server):
    server.delay = 1.0
    with pytest.raises(ModelError) as err:
        _sampler(server.url, timeout=0.2).sample(["x"])
    _one_sentence(str(err.value), "timeout")
    assert "within 0.2 s" in str(err.value)
    assert len(server.requests) == 1  # a timeout is not retried


def test_an_unreachable_server_is_one_sentence():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelError) as err:
        _sampler(f"http://127.0.0.1:{port}").sample(["x"])
    message = str(err.value)
    _one_sentence(message, "url")
    assert "cannot reach" in message and "after 3 tries" in message


def test_a_wrong_model_names_what_the_server_serves(server: _Server):
    with pytest.raises(ModelError) as err:
        _sampler(server.url, model="teacher-70b").sample(["x"])
    message = str(err.value)
    _one_sentence(message, "model")
    assert f"serves {MODEL}, draft-1b, not teacher-70b" in message
    assert server.requests == []  # failed before any sampling request


def test_concurrency_and_rate_limits(server: _Server):
    server.delay = 0.05
    sampler = _sampler(server.url, max_concurrency=3)
    out = sampler.sample([str(i) for i in range(12)])
    assert out == [[f"{i}/0"] for i in range(12)] and 1 < server.peak <= 3
    start = time.perf_counter()
    # 10 a second with a burst of 10: the 1 + 14 requests need at least 0.5 s.
    _sampler(server.url, max_concurrency=8, requests_per_second=10).sample(["p"] * 14)
    assert time.perf_counter() - start >= 0.45


def test_bad_settings_and_a_missing_key_are_config_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR is not set"):
        _sampler("http://127.0.0.1:9", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(ConfigError, match="endpoint.url"):
        EndpointConfig(url="localhost:8000", model=MODEL)
    with pytest.raises(ConfigError, match="endpoint.max_concurrency"):
        EndpointConfig(url="http://x", model=MODEL, max_concurrency=0)
    assert EndpointConfig(url="http://h:1/", model=MODEL).base == "http://h:1/v1"

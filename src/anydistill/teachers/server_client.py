"""The HTTP half of the server teacher: vLLM's prompt log-probs of one sequence, the server's
tokenization of a probe text, and a pool of daemon threads that runs the requests.

One request scores one training sequence: ``POST /v1/completions`` with the token ids as
``prompt``, ``max_tokens: 1`` and ``prompt_logprobs: k`` (vLLM's extension of the OpenAI API).
The answer's ``choices[0].prompt_logprobs`` is ``None`` for the first token and then, per
position, ``{token_id: {"logprob", "rank", "decoded_token"}}`` holding the top-k plus the
actual token (with its own rank, which may be > k). vLLM refuses k above its
``--max-logprobs`` (default 20) with HTTP 400. ``temperature: 1`` is sent because vLLM's V0
engine scaled prompt log-probs by the request's temperature.

Retries, timeouts and the model check are `anydistill.http_client`'s; what only this request
can mean (too many log-probs asked, a sequence longer than the server's context, an answer
without ``prompt_logprobs``) is said here, in one `ServerError` sentence.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from anydistill.errors import ServerError
from anydistill.http_client import EndpointConfig, JsonClient, Rejected

__all__ = ["DaemonPool", "LogprobClient", "top_k_rows"]

_MAX_LOGPROBS = "start vLLM with --max-logprobs {k} (or more), or lower {key}"


class LogprobClient(JsonClient):
    """`top_k` prompt log-probs of token sequences from a vLLM server; `k_key` names the
    setting that chose k, for errors (default: `<field>.top_k`)."""

    timeout_fix = "lower teacher.max_concurrency (each request scores one training sequence)"

    def __init__(self, config: EndpointConfig, top_k: int, k_key: str | None = None) -> None:
        super().__init__(config)
        self.top_k = top_k
        self.k_key = k_key or f"{config.field}.top_k"

    def prompt_logprobs(self, ids: list[int]) -> list[Any]:
        """The answer's ``prompt_logprobs`` for `ids`: one entry per token, the first None."""
        f, k = self.config.field, self.top_k
        body = {
            "model": self.config.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": k,
        }
        try:
            answer = self.request("/completions", body)
        except Rejected as err:
            said = err.detail.lower()
            if err.code == 400 and "logprob" in said:
                raise ServerError(
                    f"{self.k_key}: the server refused {k} log-probs per token ({err.detail}); "
                    + _MAX_LOGPROBS.format(k=k, key=self.k_key)
                ) from None
            if err.code == 400 and ("context" in said or "max_model_len" in said):
                raise ServerError(
                    f"data.seq_len: the server refused a sequence of {len(ids)} tokens "
                    f"({err.detail}); lower data.seq_len or raise vLLM's --max-model-len"
                ) from None
            raise
        choices = answer.get("choices") if isinstance(answer, dict) else None
        first = choices[0] if isinstance(choices, list) and choices else None
        positions = first.get("prompt_logprobs") if isinstance(first, dict) else None
        if not isinstance(positions, list):
            raise ServerError(
                f"{f}.url: {self.config.base}/completions answered without `prompt_logprobs` "
                "(vLLM's extension of the OpenAI API); serve the teacher with `vllm serve`"
            )
        if len(positions) != len(ids):
            raise ServerError(
                f"{f}.url: the server scored {len(positions)} of the {len(ids)} tokens sent; "
                "serve the teacher with `vllm serve` (token ids in, one entry per token out)"
            )
        return positions

    def tokenize(self, text: str) -> list[int] | None:
        """The server's token ids of `text` (no special tokens), from vLLM's ``/tokenize``;
        None when the server has no such route."""
        body = {"model": self.config.model, "prompt": text, "add_special_tokens": False}
        try:
            answer = self.request("/tokenize", body, root=True)
        except Rejected as err:
            if err.code in (404, 405):
                return None
            raise
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        return tokens


def top_k_rows(
    positions: list[Any], k: int, vocab: int, field: str, k_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids `[n - 1, k]` (int64) and their log-probs (float64) at positions 1..n-1,
    sorted by descending probability, from a ``prompt_logprobs`` answer. `field` and `k_key`
    (default `<field>.top_k`) name the settings in errors."""
    k_key = k_key or f"{field}.top_k"
    n = len(positions)
    ids = np.empty((max(n - 1, 0), k), dtype=np.int64)
    logp = np.empty((max(n - 1, 0), k), dtype=np.float64)
    for t in range(1, n):
        entries = positions[t]
        try:
            top = [
                (float(e["logprob"]), int(token))
                for token, e in entries.items()
                if e.get("rank") is None or int(e["rank"]) <= k
            ]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ServerError(
                f"{field}.url: the server's prompt_logprobs at position {t} are not "
                "{token_id: {logprob, rank}}; serve the teacher with `vllm serve`"
            ) from None
        if len(top) < k:
            raise ServerError(
                f"{k_key}: the server returned {len(top)} log-probs per token, fewer than the "
                f"{k} asked for; " + _MAX_LOGPROBS.format(k=k, key=k_key)
            )
        top.sort(key=lambda pair: -pair[0])
        for j, (value, token) in enumerate(top[:k]):
            logp[t - 1, j] = value
            ids[t - 1, j] = token
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = int(ids.max() if ids.max() >= vocab else ids.min())
        raise ServerError(
            f"{field}.tokenizer: the server returned token id {bad}, outside this tokenizer's "
            f"{vocab} ids; the server's model uses another tokenizer: give its own as "
            f"{field}.tokenizer"
        )
    return ids, logp


class DaemonPool:
    """``workers`` daemon threads running submitted calls in submission order.

    Daemon threads never hold up the interpreter's exit (a request left waiting on a dead
    server does not keep a stopped run alive); `close` cancels what has not started.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._queue: queue.SimpleQueue[tuple[Future, Callable, tuple] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._run, daemon=True, name="teacher-server")
                thread.start()
                self._threads.append(thread)
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as err:  # handed to whoever waits on the future
                future.set_exception(err)
            else:
                future.set_result(result)

    def close(self) -> None:
        """Cancel the calls not started yet and let the threads end."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)

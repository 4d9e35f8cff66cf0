"""Sample a black-box teacher behind an OpenAI-compatible server (vLLM, SGLang, a hosted API).

Plain-text prompts go to ``/v1/completions``, chat messages to ``/v1/chat/completions``. The
server's ``/v1/models`` is read once before the first request, so a wrong model name fails at
once with the names it does serve. Requests run on a thread pool of ``max_concurrency``,
paced by a token bucket (``requests_per_second``); connection errors, HTTP 429 and 5xx are
retried with exponential backoff. A request that runs out its ``timeout`` is not retried: it
would most likely time out again, and the usual fix is a longer timeout or fewer tokens.
Every failure is one `ModelError` sentence naming the setting to change.

The API key is read from the environment variable named by ``api_key_env`` and only ever
sent in the ``Authorization`` header; it is never logged or put in an error. Only the
standard library is used (``urllib``), so the client needs no extra dependency.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from anydistill.errors import ConfigError, ModelError

__all__ = ["EndpointConfig", "EndpointSampler", "Prompt"]

log = logging.getLogger(__name__)

Prompt = str | list[dict[str, Any]]  # plain text, or chat messages ({"role", "content"})

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_MAX_BACKOFF_S = 60.0
_MAX_DETAIL = 200  # characters of a server's error message put in a sentence


@dataclass(frozen=True)
class EndpointConfig:
    """Where the teacher is served and how hard to push it.

    ``url``: the server's base URL (``http://host:8000`` or ``http://host:8000/v1``).
    ``requests_per_second``: None for no limit. ``timeout``: seconds per request.
    ``retries``: extra tries after a connection error, 429 or 5xx, waiting ``backoff``
    seconds and doubling. ``field``: the recipe key these settings came from, for errors.
    """

    url: str
    model: str
    api_key_env: str | None = None
    max_concurrency: int = 8
    requests_per_second: float | None = None
    timeout: float = 600.0
    retries: int = 3
    backoff: float = 1.0
    field: str = "endpoint"

    def __post_init__(self) -> None:
        f = self.field
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(
                f"{f}.url: {self.url!r} is not an http(s) URL; give the server's address, "
                "e.g. http://localhost:8000/v1"
            )
        if not self.model:
            raise ConfigError(f"{f}.model: empty; name the model the server serves")
        if self.max_concurrency < 1:
            raise ConfigError(
                f"{f}.max_concurrency: must be at least 1, got {self.max_concurrency}"
            )
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ConfigError(
                f"{f}.requests_per_second: must be positive, got {self.requests_per_second}; "
                "leave it unset for no limit"
            )
        if self.timeout <= 0:
            raise ConfigError(f"{f}.timeout: must be positive seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"{f}.retries: must be 0 or more, got {self.retries}")
        if self.backoff < 0:
            raise ConfigError(f"{f}.backoff: must be 0 or more seconds, got {self.backoff}")

    @property
    def base(self) -> str:
        """The API root, ending in ``/v1``."""
        base = self.url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"


class _TokenBucket:
    """At most ``rate`` requests a second on average, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                delay = (1.0 - self.tokens) / self.rate
            time.sleep(delay)


def _detail(raw: bytes) -> str:
    """The message of a server's error body ({"error": {"message"}}, {"detail"}, text)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("message") or error.get("detail") or error
        text = str(error)
    text = " ".join(text.split())
    return text[:_MAX_DETAIL] + ("..." if len(text) > _MAX_DETAIL else "")


def _is_timeout(err: BaseException) -> bool:
    reason = getattr(err, "reason", None)
    return isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)


class EndpointSampler:
    """Samples completions from the configured server; safe to share between threads."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self._key: str | None = None
        if config.api_key_env:
            self._key = os.environ.get(config.api_key_env)
            if not self._key:
                raise ConfigError(
                    f"{config.field}.api_key_env: the environment variable "
                    f"{config.api_key_env} is not set; export it with the server's API key"
                )
        host = urllib.parse.urlsplit(config.url).hostname or ""
        # A local server is never reached through an HTTP proxy set for the outside world.
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)
        self._bucket = (
            _TokenBucket(config.requests_per_second) if config.requests_per_second else None
        )
        self._checked = False
        self._check_lock = threading.Lock()

    # --- one HTTP exchange ------------------------------------------------------------

    def _request(self, path: str, body: dict[str, Any] | None) -> Any:
        """The JSON answer of GET (no body) or POST ``path``, retrying what may pass."""
        cfg = self.config
        url = cfg.base + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "anydistill"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        tries = cfg.retries + 1
        for attempt in range(tries):
            if self._bucket is not None:
                self._bucket.acquire()
            request = urllib.request.Request(url, data=data, headers=headers)
            try:
                with self._opener.open(request, timeout=cfg.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as err:
                detail = _detail(err.read() or b"")
                if err.code != 429 and err.code < 500:
                    raise self._rejected(url, err.code, detail) from None
                why = f"HTTP {err.code}" + (f": {detail}" if detail else "")
                retry_after = err.headers.get("Retry-After") if err.headers else None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                if _is_timeout(err):
                    raise ModelError(
                        f"{cfg.field}.timeout: {url} sent no answer within {cfg.timeout:g} s; "
                        f"raise {cfg.field}.timeout or lower max_tokens"
                    ) from None
                reason = getattr(err, "reason", err)
                why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
                retry_after = None
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ModelError(
                        f"{cfg.field}.url: {url} answered with something other than JSON; "
                        "point it at an OpenAI-compatible server"
                    ) from None
            if attempt + 1 < tries:
                delay = min(_MAX_BACKOFF_S, cfg.backoff * 2**attempt)
                if retry_after and retry_after.isdigit():  # the server knows best (429)
                    delay = min(_MAX_BACKOFF_S, max(delay, float(retry_after)))
                log.debug("%s failed (%s); retry %d in %.2f s", url, why, attempt + 1, delay)
                time.sleep(delay)
        if why.startswith("HTTP"):
            raise ModelError(
                f"{cfg.field}.url: {url} kept failing ({why}) after {tries} tries; check the "
                f"server's log, or lower {cfg.field}.max_concurrency if it is overloaded"
            )
        raise ModelError(
            f"{cfg.field}.url: cannot reach {url} ({why}) after {tries} tries; start the "
            f"server or fix {cfg.field}.url"
        )

    def _rejected(self, url: str, code: int, detail: str) -> ModelError:
        f = self.config.field
        said = f" ({detail})" if detail else ""
        if code in (401, 403):
            fix = (
                f"check the key in {self.config.api_key_env}"
                if self.config.api_key_env
                else f"set {f}.api_key_env to the variable holding the API key"
            )
            return ModelError(
                f"{f}.api_key_env: {url} refused the request (HTTP {code}){said}; {fix}"
            )
        if code == 404:
            return ModelError(
                f"{f}.url: {url} does not exist (HTTP 404){said}; give the server's base URL, "
                "e.g. http://localhost:8000/v1"
            )
        return ModelError(
            f"{f}: {url} rejected the request (HTTP {code}){said}; fix the sampling settings "
            "or the prompt it names"
        )

    # --- the model check --------------------------------------------------------------

    def served_models(self) -> list[str]:
        """The model ids the server lists at ``/v1/models``."""
        answer = self._request("/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise ModelError(
                f"{self.config.field}.url: {self.config.base}/models did not list models; "
                "point it at an OpenAI-compatible server"
            )
        return [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id")]

    def check_model(self) -> None:
        """Fail with one sentence unless the server serves ``config.model``; runs once."""
        with self._check_lock:
            if self._checked:
                return
            served = self.served_models()
            if self.config.model not in served:
                names = ", ".join(served) if served else "no models"
                raise ModelError(
                    f"{self.config.field}.model: {self.config.base} serves {names}, not "
                    f"{self.config.model}; set {self.config.field}.model to one of them"
                )
            self._checked = True

    # --- sampling ---------------------------------------------------------------------

    def _choices(self, prompt: Prompt, body: dict[str, Any]) -> list[str]:
        chat = not isinstance(prompt, str)
        if chat:
            answer = self._request("/chat/completions", {**body, "messages": prompt})
        else:
            answer = self._request("/completions", {**body, "prompt": prompt})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise ModelError(
                f"{self.config.field}.url: the server answered without `choices`; point it at "
                "an OpenAI-compatible server"
            )
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        return [_text(c, chat) for c in choices if isinstance(c, dict)]

    def _sample_one(self, prompt: Prompt, n: int, body: dict[str, Any]) -> list[str]:
        """``n`` samples of one prompt; asks again when a server returns fewer (some hosted
        APIs ignore ``n``), with a shifted seed so the extra samples differ."""
        out: list[str] = []
        for extra in range(n):
            request = {**body, "n": n - len(out)}
            if body.get("seed") is not None and extra:
                request["seed"] = body["seed"] + extra
            got = self._choices(prompt, request)
            if not got:
                break
            out += got[: n - len(out)]
            if len(out) >= n:
                return out
        raise ModelError(
            f"{self.config.field}: the server returned {len(out)} of the {n} samples asked "
            "for; lower n or check the server's log"
        )

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """``n`` completions for each prompt, in prompt order.

        A string prompt is completed as text; a list of ``{"role", "content"}`` messages goes
        through the chat template. A chat answer with separate reasoning (``reasoning_content``
        from vLLM's reasoning parser or DeepSeek's API) comes back as ``<think>reasoning
        </think>`` + the answer. ``progress(k)`` is called after each prompt with k = 1.
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.check_model()
        body: dict[str, Any] = {
            "model": self.config.model,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        results: list[list[str] | None] = [None] * len(prompts)
        stop = threading.Event()

        def job(i: int) -> None:
            if stop.is_set():  # another prompt failed: do not start new requests
                return
            results[i] = self._sample_one(prompts[i], n, body)
            if progress is not None:
                progress(1)

        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            futures = [pool.submit(job, i) for i in range(len(prompts))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception()), None)
            if failed is not None:
                stop.set()
                for future in futures:
                    future.cancel()
                raise failed.exception()  # type: ignore[misc]
        return [r if r is not None else [] for r in results]


def _text(choice: dict[str, Any], chat: bool) -> str:
    if not chat:
        return str(choice.get("text") or "")
    message = choice.get("message") or {}
    content = str(message.get("content") or "")
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        return f"<think>\n{reasoning}\n</think>\n\n{content}"
    return content

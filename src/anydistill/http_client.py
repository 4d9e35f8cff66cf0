"""JSON over HTTP to an OpenAI-compatible server (vLLM, SGLang, a hosted API), said in one
sentence when it fails.

`JsonClient` is what every client of a served model shares: the settings (`EndpointConfig`),
the API key, GET and POST of JSON with retries, the model check against ``/v1/models``. The
trace sampler (`traces/endpoint.py`) and the server teacher (`teachers/server_client.py`)
build on it.

Connection errors, HTTP 429 and 5xx are retried with exponential backoff. A request that runs
out its ``timeout`` is not retried: it would most likely time out again, and the usual fix is
a longer timeout or a smaller request. Any other HTTP error is `Rejected` (its code and the
server's message kept, so a caller can say what it means for its own request). Every failure
is one `ServerError` sentence naming the setting to change.

The API key is read from the environment variable named by ``api_key_env`` and only ever sent
in the ``Authorization`` header; it is never logged or put in an error. Only the standard
library is used (``urllib``), so the clients need no extra dependency.
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
from dataclasses import dataclass
from typing import Any

from anydistill.errors import ConfigError, ServerError

__all__ = ["EndpointConfig", "JsonClient", "Rejected"]

log = logging.getLogger(__name__)

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_MAX_BACKOFF_S = 60.0
_MAX_DETAIL = 200  # characters of a server's error message put in a sentence


@dataclass(frozen=True)
class EndpointConfig:
    """Where a model is served and how hard to push it.

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

    @property
    def root(self) -> str:
        """The server's root, where vLLM keeps the routes outside the OpenAI API
        (``/tokenize``)."""
        return self.base[: -len("/v1")]


class Rejected(ServerError):
    """The server refused a request (an HTTP 4xx other than 429); one sentence, plus the
    code and the server's own message for a caller that can say more."""

    def __init__(self, message: str, code: int, detail: str) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail


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


class JsonClient:
    """GET and POST of JSON to the configured server; safe to share between threads.

    ``timeout_fix`` finishes the timeout sentence: what else, besides a longer timeout,
    makes this client's requests shorter.
    """

    timeout_fix = "lower max_tokens"

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

    def request(self, path: str, body: dict[str, Any] | None, root: bool = False) -> Any:
        """The JSON answer of GET (no body) or POST ``path`` under the API root (``/v1``),
        or under the server's root with ``root``, retrying what may pass."""
        cfg = self.config
        url = (cfg.root if root else cfg.base) + path
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
                    raise ServerError(
                        f"{cfg.field}.timeout: {url} sent no answer within {cfg.timeout:g} s; "
                        f"raise {cfg.field}.timeout or {self.timeout_fix}"
                    ) from None
                reason = getattr(err, "reason", err)
                why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
                retry_after = None
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ServerError(
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
            raise ServerError(
                f"{cfg.field}.url: {url} kept failing ({why}) after {tries} tries; check the "
                f"server's log, or lower {cfg.field}.max_concurrency if it is overloaded"
            )
        raise ServerError(
            f"{cfg.field}.url: cannot reach {url} ({why}) after {tries} tries; start the "
            f"server or fix {cfg.field}.url"
        )

    def _rejected(self, url: str, code: int, detail: str) -> Rejected:
        f = self.config.field
        said = f" ({detail})" if detail else ""
        if code in (401, 403):
            fix = (
                f"check the key in {self.config.api_key_env}"
                if self.config.api_key_env
                else f"set {f}.api_key_env to the variable holding the API key"
            )
            return Rejected(
                f"{f}.api_key_env: {url} refused the request (HTTP {code}){said}; {fix}",
                code,
                detail,
            )
        if code == 404:
            return Rejected(
                f"{f}.url: {url} does not exist (HTTP 404){said}; give the server's base URL, "
                "e.g. http://localhost:8000/v1",
                code,
                detail,
            )
        return Rejected(
            f"{f}: {url} rejected the request (HTTP {code}){said}; fix the sampling settings "
            "or the prompt it names",
            code,
            detail,
        )

    # --- the model check --------------------------------------------------------------

    def model_entries(self) -> list[dict[str, Any]]:
        """The entries the server lists at ``/v1/models`` (``id``, and with vLLM
        ``max_model_len``)."""
        answer = self.request("/models", None)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise ServerError(
                f"{self.config.field}.url: {self.config.base}/models did not list models; "
                "point it at an OpenAI-compatible server"
            )
        return [m for m in data if isinstance(m, dict) and m.get("id")]

    def served_models(self) -> list[str]:
        """The model ids the server lists at ``/v1/models``."""
        return [str(m["id"]) for m in self.model_entries()]

    def check_model(self) -> dict[str, Any]:
        """Fail with one sentence unless the server serves ``config.model``; returns its
        entry. The listing is read once."""
        with self._check_lock:
            if self._checked:
                return self._entry
            entries = self.model_entries()
            served = [str(m["id"]) for m in entries]
            if self.config.model not in served:
                names = ", ".join(served) if served else "no models"
                raise ServerError(
                    f"{self.config.field}.model: {self.config.base} serves {names}, not "
                    f"{self.config.model}; set {self.config.field}.model to one of them"
                )
            self._entry = entries[served.index(self.config.model)]
            self._checked = True
            return self._entry

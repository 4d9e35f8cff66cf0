"""Sample a black-box teacher behind an OpenAI-compatible server (vLLM, SGLang, a hosted API).

Plain-text prompts go to ``/v1/completions``, chat messages to ``/v1/chat/completions``. The
server's ``/v1/models`` is read once before the first request, so a wrong model name fails at
once with the names it does serve. Requests run on a thread pool of ``max_concurrency``,
paced by a token bucket (``requests_per_second``). Retries, timeouts, the API key and the
one-sentence errors are `anydistill.http_client`'s (shared with the server teacher).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from anydistill.errors import ServerError
from anydistill.http_client import EndpointConfig, JsonClient

__all__ = ["EndpointConfig", "EndpointSampler", "Prompt"]

Prompt = str | list[dict[str, Any]]  # plain text, or chat messages ({"role", "content"})


class EndpointSampler(JsonClient):
    """Samples completions from the configured server; safe to share between threads."""

    # --- sampling ---------------------------------------------------------------------

    def _choices(self, prompt: Prompt, body: dict[str, Any]) -> list[str]:
        chat = not isinstance(prompt, str)
        if chat:
            answer = self.request("/chat/completions", {**body, "messages": prompt})
        else:
            answer = self.request("/completions", {**body, "prompt": prompt})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            raise ServerError(
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
        raise ServerError(
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

"""A teacher served by vLLM (`kind = "server"`): its top-k log-probs of every token, asked
for over HTTP, as the same sparse signal the offline cache gives (`SparseTeacher`).

Each training sequence is one request (`server_client.LogprobClient`): the token ids go in,
the top-k log-probs of every position come out. Row t of a sequence is the distribution of
token t + 1 given tokens 0..t, the row the student's hidden state t is scored against. The
tail is 1 - (sum of the top-k probabilities), so every term the cache serves (bucket or
renorm tail) runs on it. Where k covers the vocabulary the tail is empty and the loss is the
live teacher's. The k + 1 outcomes are renormalized to sum to one, as the cache's decoder does.
Below ``k * 2**-24`` the difference 1 - sum is rounding of the server's float32 log-probs,
so the tail is kept at that floor rather than made exactly zero.

Overlap: `prefetch(batches)` sends the requests of micro-batches before they are trained on
(the loop hands it a step's micro-batches, and the next step's when the source can tell them
without moving); `signal` then takes each sequence's answer, waiting only for what has not
arrived. Answers are keyed by the sequence's token ids, so a prefetched answer can only ever
be used for exactly its own tokens, and prefetching never moves the data stream: what a
checkpoint saves does not depend on it.

At set-up `connect` checks, one sentence each: the server answers, it serves `model` (and a
`max_model_len` that holds `data.seq_len`), it tokenizes a probe text as the local tokenizer
does (vLLM's ``/tokenize``; failing that, the answer's ``decoded_token`` strings), and it
returns k log-probs per token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from anydistill.data.views import Batch, StepInputs, step_inputs
from anydistill.errors import ConfigError, ServerError
from anydistill.http_client import EndpointConfig
from anydistill.losses.sparse import SparseTeacher
from anydistill.models.tokenizer import real_vocab_size
from anydistill.teachers.base import NO_EXTRAS, Needs
from anydistill.teachers.server_client import DaemonPool, LogprobClient, top_k_rows

__all__ = ["PROBE_TEXT", "ServerTeacher"]

log = logging.getLogger(__name__)

FIELD = "teacher"
PROBE_TEXT = (
    "Question: How many apples does the answer have? The quick brown fox jumps over 13 lazy "
    "dogs; 2 + 2 = 4, isn't it? Ünïcödé 你好 ok.\n"
)
_CPU = torch.device("cpu")


class ServerTeacher:
    """The top-k log-probs of a model served by vLLM, as a teacher kind (see teachers.base)."""

    kind = "server"
    model = None

    def __init__(
        self,
        client: LogprobClient,
        tokenizer: PreTrainedTokenizerBase,
        tail: str,
        max_concurrency: int,
    ) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.vocab = real_vocab_size(tokenizer)
        self.k = client.top_k
        self.tail = tail
        self._pool = DaemonPool(max_concurrency)
        self._pending: dict[bytes, Future] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        tail: str,
        seq_len: int | None,
        url: str,
        model: str,
        top_k: int,
        timeout: float,
        retries: int,
        max_concurrency: int,
        api_key_env: str | None = None,
        backoff: float = 1.0,
        k_key: str = "teacher.top_k",
    ) -> ServerTeacher:
        """A server teacher whose server has passed every check (see the module's doc).
        `top_k` above the vocabulary asks for the whole vocabulary; `k_key` is the setting
        that chose it, for errors."""
        config = EndpointConfig(
            url=url, model=model, api_key_env=api_key_env, max_concurrency=max_concurrency,
            timeout=timeout, retries=retries, backoff=backoff, field=FIELD,
        )  # fmt: skip
        client = LogprobClient(config, min(top_k, real_vocab_size(tokenizer)), k_key)
        teacher = cls(client, tokenizer, tail, max_concurrency)
        teacher.check(seq_len)
        return teacher

    # --- set-up checks ----------------------------------------------------------------

    def check(self, seq_len: int | None) -> None:
        """One sentence for a server that cannot teach this run (nothing is trained yet)."""
        entry = self.client.check_model()
        limit = entry.get("max_model_len")
        if seq_len is not None and isinstance(limit, int) and seq_len + 1 > limit:
            raise ServerError(
                f"data.seq_len: the server's max_model_len is {limit}, too short for sequences "
                f"of {seq_len} tokens (plus the one it generates); lower data.seq_len or raise "
                "vLLM's --max-model-len"
            )
        probe = list(self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
        theirs = self.client.tokenize(PROBE_TEXT)
        if theirs is not None and theirs != probe:
            where = _first_difference(theirs, probe)
            raise ServerError(
                f"{FIELD}.tokenizer: the server tokenizes a probe text into {len(theirs)} "
                f"tokens, this run's tokenizer into {len(probe)} (first difference at token "
                f"{where}); the served model uses another tokenizer: give its own as "
                f"{FIELD}.tokenizer"
            )
        positions = self.client.prompt_logprobs(probe)
        top_k_rows(positions, self.k, self.vocab, FIELD, self.client.k_key)  # k, in the vocab
        if theirs is None:
            self._check_decoded(probe, positions)

    def _check_decoded(self, probe: list[int], positions: list[Any]) -> None:
        """Without ``/tokenize``: the probe's tokens must read, as the server decodes them, as
        this tokenizer decodes them (one in twenty may differ: servers format some tokens
        their own way)."""
        checked = agreed = 0
        for t in range(1, len(probe)):
            entry = positions[t].get(str(probe[t])) if isinstance(positions[t], dict) else None
            said = entry.get("decoded_token") if isinstance(entry, dict) else None
            ours = self.tokenizer.decode([probe[t]])
            if not isinstance(said, str) or "\ufffd" in ours or "\ufffd" in said:
                continue
            checked += 1
            raw = self.tokenizer.convert_ids_to_tokens(probe[t])
            agreed += said.strip() == ours.strip() or said == raw
        if checked - agreed > max(1, checked // 20):
            raise ServerError(
                f"{FIELD}.tokenizer: the server spells {checked - agreed} of {checked} probe "
                "tokens otherwise than this run's tokenizer; the served model uses another "
                f"tokenizer: give its own as {FIELD}.tokenizer"
            )

    # --- the teacher seam -------------------------------------------------------------

    def prefetch(self, batches: Sequence[Batch]) -> None:
        """Send the requests of `batches`' sequences now (those not already sent)."""
        for batch in batches:
            inputs = step_inputs(batch, _CPU)
            for row in _sequences(inputs):
                self._future(row)

    def signal(self, inputs: StepInputs, needs: Needs = NO_EXTRAS) -> SparseTeacher:
        """The sparse teacher for the batch's selected rows, in the loss engine's row order."""
        if needs.hidden_layers or needs.attention_layers:
            raise ConfigError(
                "teacher.kind: a server gives the teacher's top-k distribution only; terms on "
                "layer features need a live teacher (teacher.kind: model)"
            )
        rows = _sequences(inputs)
        futures = [self._future(row) for row in rows]
        try:
            answers = [future.result() for future in futures]
        finally:
            with self._lock:
                for row in rows:
                    self._pending.pop(row.tobytes(), None)
        select = inputs.select.cpu().numpy()
        parts: tuple[list[np.ndarray], ...] = ([], [], [])
        for r, answer in enumerate(answers):
            keep = select[r, : len(rows[r]) - 1]  # rows past a sequence's end are not selected
            for part, values in zip(parts, answer, strict=True):
                part.append(values[keep])
        ids, logp, log_tail = (torch.from_numpy(np.concatenate(part)) for part in parts)
        device = inputs.input_ids.device
        return SparseTeacher(
            ids.long().to(device), logp.float().to(device), log_tail.float().to(device), self.tail
        )

    def close(self) -> None:
        """Cancel the requests not sent yet; the pool's threads end."""
        self._pool.close()
        with self._lock:
            self._pending.clear()

    # --- requests ---------------------------------------------------------------------

    def _future(self, row: np.ndarray) -> Future:
        key = row.tobytes()
        with self._lock:
            future = self._pending.get(key)
            if future is None:
                future = self._pending[key] = self._pool.submit(self._fetch, row.tolist())
        return future

    def _fetch(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sequence's rows 1..n-1: top-k ids, log-probs and log tail, k + 1 outcomes
        renormalized (runs on the pool)."""
        positions = self.client.prompt_logprobs(ids)
        top, logp = top_k_rows(positions, self.k, self.vocab, FIELD, self.client.k_key)
        if self.k >= self.vocab:
            tail = np.full(logp.shape[0], -np.inf)
        else:
            mass = 1.0 - np.exp(logp).sum(axis=1)
            tail = np.log(np.maximum(mass, self.k * 2.0**-24))
        both = np.concatenate([logp, tail[:, None]], axis=1)
        high = both.max(axis=1, keepdims=True)
        both = both - (high + np.log(np.exp(both - high).sum(axis=1, keepdims=True)))
        return top, both[:, :-1].astype(np.float32), both[:, -1].astype(np.float32)


def _sequences(inputs: StepInputs) -> list[np.ndarray]:
    """Each row's attended token ids (right-padded batches: the first `attention` tokens)."""
    ids = inputs.input_ids.cpu().numpy().astype("<i8")
    lengths = inputs.attention_mask.sum(dim=1).tolist()
    return [ids[r, : int(n)] for r, n in enumerate(lengths)]


def _first_difference(theirs: list[int], ours: list[int]) -> int:
    pairs = enumerate(zip(theirs, ours, strict=False))
    return next((i for i, (a, b) in pairs if a != b), min(len(theirs), len(ours)))

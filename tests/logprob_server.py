"""A small OpenAI-compatible server on 127.0.0.1 that answers as `vllm serve` does for the
server teacher: `/v1/models`, `/tokenize` and `/v1/completions` with `prompt_logprobs`, whose
log-probs are a real (tiny) causal LM's.

`prompt_logprobs` is vLLM's format: None for the first token, then per position
`{token_id: {"logprob", "rank", "decoded_token"}}` with the top-k (ranks 1..k) plus the actual
token with its own rank. Knobs for the failures a test needs: `delay` (seconds added to each
completion), `max_logprobs` (vLLM's cap, refused with its HTTP 400), `short_by` (silently
fewer log-probs than asked), `tokenizer` (the one the server tokenizes and decodes with),
`tokenize_route`, `fail_after` (completions answered before every later one gets HTTP 500),
`models`, `max_model_len`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


class _Handler(BaseHTTPRequestHandler):
    server: LogprobServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # a client that gave up (timeouts)
            pass

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/v1/models":
            data = [{"id": m, "max_model_len": srv.max_model_len} for m in srv.models]
            return self._send(200, {"object": "list", "data": data})
        self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize" and srv.tokenize_route:
            ids = srv.tokenizer(body["prompt"], add_special_tokens=body["add_special_tokens"])
            tokens = list(ids["input_ids"])
            return self._send(200, {"tokens": tokens, "count": len(tokens), "max_model_len": 256})
        if self.path != "/v1/completions":
            return self._send(404, {"detail": "Not Found"})
        with srv.lock:
            srv.requests += 1
            failing = srv.fail_after is not None and srv.requests > srv.fail_after
            srv.in_flight += 1
            srv.peak = max(srv.peak, srv.in_flight)
        try:
            time.sleep(srv.delay)
            if failing:
                return self._send(500, {"error": {"message": "engine dead"}})
            if body.get("model") not in srv.models:
                return self._send(404, {"error": {"message": f"model {body.get('model')}"}})
            k = int(body["prompt_logprobs"])
            if srv.max_logprobs is not None and k > srv.max_logprobs:
                message = (
                    f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                    f"{srv.max_logprobs}"
                )
                return self._send(400, {"error": {"message": message, "code": 400}})
            positions = srv.prompt_logprobs(body["prompt"], k - srv.short_by)
            choice = {"index": 0, "text": "x", "prompt_logprobs": positions}
            self._send(200, {"object": "text_completion", "choices": [choice]})
        finally:
            with srv.lock:
                srv.in_flight -= 1


class LogprobServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.model = model.eval()
        self.models = [name]
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.serve_tokenizer(tokenizer)
        self.reset()

    def serve_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.decoded = [tokenizer.decode([i]) for i in range(len(tokenizer))]

    def reset(self) -> None:
        """Every knob back to a healthy vLLM; counters to zero."""
        self.delay = 0.0
        self.max_logprobs: int | None = None
        self.short_by = 0
        self.tokenize_route = True
        self.fail_after: int | None = None
        self.max_model_len = 256
        self.requests = 0
        self.in_flight = 0
        self.peak = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def start(self) -> LogprobServer:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.daemon = True
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join()

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int], k: int) -> list[dict | None]:
        with self.model_lock:
            logits = self.model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        top_p, top_i = logp[:-1].topk(k, dim=-1)
        out: list[dict | None] = [None]
        for t in range(1, len(ids)):
            row, actual = logp[t - 1], ids[t]
            rank = int((row > row[actual]).sum()) + 1
            entries = {str(actual): self._entry(actual, float(row[actual]), rank)}
            pairs = zip(top_p[t - 1].tolist(), top_i[t - 1].tolist(), strict=True)
            for j, (value, token) in enumerate(pairs):
                entries[str(token)] = self._entry(token, value, j + 1)
            out.append(entries)
        return out

    def _entry(self, token: int, value: float, rank: int) -> dict:
        spelled = self.decoded[token] if token < len(self.decoded) else ""
        return {"logprob": value, "rank": rank, "decoded_token": spelled}


def main() -> None:
    """`python tests/logprob_server.py MODEL_DIR NAME [DELAY]`: serve MODEL_DIR (a saved model
    and its tokenizer) under NAME in this process until killed; prints the URL first."""
    import sys

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path, name = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(path)
    server = LogprobServer(model, AutoTokenizer.from_pretrained(path), name)
    server.delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    print(server.url, flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()

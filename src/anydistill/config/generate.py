"""The recipe's `generate:` section: how `anydistill generate` samples, verifies and filters
reasoning traces of the recipe's prompts (`data:`) from its teacher or from a served one."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from anydistill.config.base import Strict

__all__ = ["BenchmarkFile", "DecontamConfig", "DedupConfig", "EndpointSection", "TraceGenConfig"]


class EndpointSection(Strict):
    """A black-box teacher behind an OpenAI-compatible server (vLLM, SGLang, a hosted API)."""

    url: str
    model: str = Field(min_length=1)
    api_key_env: str | None = None  # the name of the variable holding the key, never the key
    max_concurrency: int = Field(8, ge=1)
    requests_per_second: float | None = Field(None, gt=0.0)
    timeout: float = Field(600.0, gt=0.0)
    retries: int = Field(3, ge=0)


class DedupConfig(Strict):
    """Exact, then MinHash near-duplicate removal (anydistill.traces.dedup)."""

    prompts: bool = True
    traces: bool = True
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=2)


class BenchmarkFile(Strict):
    """A benchmark .jsonl(.gz) whose questions must not appear in the traces."""

    path: str
    name: str | None = None  # default: the file's name (or its folder's for test.jsonl)
    field: str | None = None  # default: question, problem or prompt


class DecontamConfig(Strict):
    """Drop prompts and traces sharing a word n-gram with a benchmark (none by default: the
    benchmark files are the user's to give)."""

    benchmarks: list[BenchmarkFile] = Field(default_factory=list)
    n: int = Field(8, ge=1)


class TraceGenConfig(Strict):
    """Sampling (N per prompt, seeded per chunk), verification, filters and the teacher:
    `backend` samples the recipe's teacher model, `endpoint` a served one."""

    system_prompt: str | None = None  # makes every prompt a chat with this system message
    samples_per_prompt: int = Field(4, ge=1)
    # DeepSeek-R1's recommended settings for its reasoning traces.
    temperature: float = Field(0.6, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(4096, ge=1)
    # Prompts per chunk (one seed, one shard each); also sequences per `generate` call of a
    # local teacher.
    batch_size: int = Field(32, ge=1)
    backend: Literal["hf", "vllm"] | None = None  # the recipe's teacher; None: hf
    endpoint: EndpointSection | None = None
    keep: Literal["correct", "all"] = "correct"
    max_per_prompt: int | None = Field(None, ge=1)
    min_chars: int = Field(0, ge=0)
    max_chars: int | None = Field(None, ge=1)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontaminate: DecontamConfig = Field(default_factory=DecontamConfig)
    seed: int = Field(0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _one_teacher(self) -> TraceGenConfig:
        # `backend` defaults to None, not hf, so that a dumped and reloaded section (a run's
        # config.yaml) still tells "not given" from "given".
        if self.endpoint is not None and self.backend is not None:
            raise ValueError(
                "give `backend` (sample the recipe's teacher) or `endpoint` (a served "
                "teacher), not both"
            )
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self

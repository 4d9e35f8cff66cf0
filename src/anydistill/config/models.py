"""The `teacher:` / `student:` sections (and each entry of `teachers:`): where a model comes
from, its tokenizer, LoRA, and a student cut from the teacher (layers or Minitron pruning)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from anydistill.config.base import Strict


class TokenizerTrain(Strict):
    """Train a small byte-level BPE tokenizer on the run's training data (tiny recipes)."""

    vocab_size: int = Field(512, ge=300, le=65536)


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


PRUNE_SIZES = (
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "params",
)


class PruneConfig(Strict):
    """Minitron pruning (anydistill.models.prune): the student's shape, any subset of the sizes,
    or a total parameter budget; importances from `calibration` training sequences."""

    hidden_size: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    num_key_value_heads: int | None = Field(None, ge=1)
    num_hidden_layers: int | None = Field(None, ge=1)
    params: float | None = Field(None, gt=0)
    depth_metric: Literal["cosine", "loss"] = "cosine"  # loss: the LM-loss rise per dropped block
    calibration: int = Field(64, ge=1)  # sequences of the recipe's training data
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _some_target(self) -> PruneConfig:
        if all(getattr(self, k) is None for k in PRUNE_SIZES):
            raise ValueError(f"give the student's shape: one or more of {', '.join(PRUNE_SIZES)}")
        return self


class KeepAttention(Strict):
    """Which teacher layers stay attention in a converted student: `count` or `fraction` of
    them, evenly spaced (`select: even`) or the ones whose attention lowers the KL to the
    teacher most after a short mixer alignment on `calibration` training sequences
    (`select: kl`, KL-guided layer selection)."""

    count: int | None = Field(None, ge=0)
    fraction: float | None = Field(None, ge=0.0, le=1.0)
    select: Literal["even", "kl"] = "even"
    calibration: int = Field(16, ge=1)  # sequences scored by `select: kl`
    align_steps: int = Field(30, ge=0)  # mixer alignment steps before `select: kl` scores
    align_lr: float = Field(1e-3, gt=0.0)

    @model_validator(mode="after")
    def _one_size(self) -> KeepAttention:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("keep_attention: give exactly one of `count` or `fraction`")
        return self


class ConvertConfig(Strict):
    """Convert the teacher into a hybrid of another architecture (anydistill.models.convert):
    `to` a transformers model type, keeping attention in `keep_attention` layers (indices, or
    a count / fraction); every other layer's attention becomes that architecture's mixer,
    initialised from the attention weights where a mapping exists."""

    to: str
    keep_attention: list[int] | KeepAttention
    state_size: int | None = Field(None, ge=1)
    conv_kernel: int = Field(4, ge=2)


class FromTeacher(Strict):
    """Build the student from the teacher: keep these decoder layers (`layers`, weights copied),
    prune it to a shape (`prune`) or convert it to another architecture (`convert`)."""

    layers: list[int] | None = Field(None, min_length=1)
    prune: PruneConfig | None = None
    convert: ConvertConfig | None = None

    @model_validator(mode="after")
    def _one_way(self) -> FromTeacher:
        given = [k for k in ("layers", "prune", "convert") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `layers` (keep those layers), `prune` or `convert`"
            )
        return self


# A `kind: server` teacher's own keys (None elsewhere); their defaults are SERVER_DEFAULTS.
SERVER_FIELDS = ("url", "model", "top_k", "timeout", "retries", "max_concurrency", "api_key_env")
SERVER_DEFAULTS = {"top_k": 20, "timeout": 300.0, "retries": 3, "max_concurrency": 16}


class ModelConfig(Strict):
    """Where a model comes from: exactly one of `path` (hub id or local dir), `init`
    (a transformers config dict, random weights) or, for the student, `from_teacher`.
    A teacher with `kind: cache` is an offline cache directory (`path`) instead of a model;
    `tail` says how its top-k is completed (see anydistill.losses.sparse). A teacher with
    `kind: server` is a model served by vLLM at `url` under the name `model`, asked for its
    `top_k` log-probs of every token (anydistill.teachers.server); its tokenizer is
    `tokenizer`, else `model` read as a hub id or local path."""

    kind: Literal["model", "cache", "server"] = "model"
    tail: Literal["bucket", "renorm"] = "bucket"
    url: str | None = None
    model: str | None = Field(None, min_length=1)
    top_k: int | None = Field(None, ge=1)  # default 20, vLLM's default --max-logprobs
    timeout: float | None = Field(None, gt=0.0)  # seconds per request; default 300
    retries: int | None = Field(None, ge=0)  # default 3
    max_concurrency: int | None = Field(None, ge=1)  # requests in flight; default 16
    api_key_env: str | None = None  # the variable holding the key, never the key
    path: str | None = None
    init: dict[str, Any] | None = None
    from_teacher: FromTeacher | None = None
    tokenizer: str | TokenizerTrain | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    attn_implementation: str | None = None
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        given = [k for k in SERVER_FIELDS if getattr(self, k) is not None]
        if self.kind != "server" and given:
            raise ValueError(
                f"`{given[0]}` is a setting of a `kind: server` teacher only "
                f"({', '.join(SERVER_FIELDS)}); drop it or set teacher.kind: server"
            )
        if self.kind == "server":
            return self._server()
        if self.kind == "cache" and (self.path is None or self.init or self.from_teacher):
            raise ValueError(
                "a `kind: cache` teacher needs `path` (the directory `anydistill cache` wrote) "
                "and nothing else"
            )
        given = [k for k in ("path", "init", "from_teacher") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `path` (hub id or local directory), `init` (a model "
                "config for random weights) or `from_teacher` (student only); "
                f"got {given or 'none'}"
            )
        if self.init is not None and "model_type" not in self.init:
            raise ValueError("`init` needs a `model_type` key (e.g. llama, qwen2, gpt2)")
        return self

    def _server(self) -> ModelConfig:
        if self.url is None or self.model is None:
            raise ValueError(
                "a `kind: server` teacher needs `url` (the server's address, e.g. "
                "http://localhost:8000/v1) and `model` (the name it serves the teacher under)"
            )
        weights = [k for k in ("path", "init", "from_teacher") if getattr(self, k) is not None]
        if weights:
            raise ValueError(
                f"`{weights[0]}`: a `kind: server` teacher's weights stay in the server; give "
                "`url` and `model` (and `tokenizer` when `model` is not its hub id or path)"
            )
        if isinstance(self.tokenizer, TokenizerTrain):
            raise ValueError(
                "`tokenizer`: a served teacher reads its own tokenizer, which a tokenizer "
                "trained here would not be; give its hub id or local path"
            )
        return self

    def server_settings(self) -> dict[str, Any]:
        """A `kind: server` teacher's settings, defaults filled in where the recipe has none."""
        values = {k: getattr(self, k) for k in SERVER_FIELDS}
        return {k: SERVER_DEFAULTS.get(k) if v is None else v for k, v in values.items()}


class TeacherEntry(ModelConfig):
    """One of several teachers (`teachers:`): a `name` (metrics, `route_by` values), a mixture
    `weight` (>= 0; 0 leaves it out of the mixture) and the keys of a `teacher:` section."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    weight: float = Field(1.0, ge=0.0, allow_inf_nan=False)

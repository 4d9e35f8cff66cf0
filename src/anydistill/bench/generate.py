"""`anydistill bench generate`: what greedy generation costs per model and prompt length.

For each model (a hub id or a local directory that `AutoModelForCausalLM.from_pretrained`
loads) and each prompt length L, a prompt of random token ids (a seeded generator, the same
for every model with the same vocabulary; no tokenizer) is generated from greedily with the
model's cache, exactly N new tokens (a manual loop: EOS never stops it):

- `prefill_s`: time to first token, the forward over the prompt and the argmax of its last
  position (only that position's logits are computed where the model allows it);
- `decode_s`, `decode_tokens_per_s`: the N - 1 one-token forwards after it, batch * (N - 1)
  tokens; the median over `--repeats` timed runs, after one untimed run;
- `peak_extra_bytes`: the peak bytes of tensors allocated by one generation above the loaded
  weights (`bench.memory.peak_extra_bytes`: CUDA's `max_memory_allocated` over each timed run,
  on the CPU the live tensor storages of the untimed run);
- `cache_bytes`: the bytes the cache holds at the end (`bench.generate_cache`), i.e. after
  L + N - 1 positions (`cache_positions`; the last token is never fed back). A Transformer's
  grows with L; a linear-attention / state-space layer's state does not.

A length with L + N beyond the model's `max_position_embeddings` is a `skipped` record with
its reason; a case that fails (out of memory) is an `error` record; the rest are measured.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anydistill.bench.generate_cache import cache_bytes, cache_layers
from anydistill.bench.memory import peak_extra_bytes
from anydistill.errors import ConfigError, ModelError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass(frozen=True)
class GenerateSettings:
    prompt_lens: tuple[int, ...]
    new_tokens: int
    batch: int = 1
    dtype: str = "float32"
    repeats: int = 1
    seed: int = 0

    def check(self) -> None:
        """One sentence naming the flag for a value no run can take."""
        if not self.prompt_lens or any(n < 1 for n in self.prompt_lens):
            raise ConfigError(
                f"--prompt-len: {list(self.prompt_lens)} must be positive whole numbers"
            )
        for flag, value in (
            ("--new-tokens", self.new_tokens),
            ("--batch", self.batch),
            ("--repeats", self.repeats),
        ):
            if value < 1:
                raise ConfigError(f"{flag}: {value} must be a positive whole number")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype: {self.dtype!r} is not one of float32, bfloat16")


def parse_lengths(text: str) -> tuple[int, ...]:
    """`1024,4096,16384` -> (1024, 4096, 16384); anything else is one `--prompt-len` sentence."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        lengths = tuple(int(p) for p in parts)
    except ValueError:
        lengths = ()
    if not lengths or any(n < 1 for n in lengths):
        raise ConfigError(
            f"--prompt-len: {text!r} is not a comma-separated list of positive whole numbers "
            "(e.g. 1024,4096,16384)"
        )
    return lengths


def dtype_name(name: str, device: torch.device) -> str:
    """The canonical dtype: bfloat16 on CUDA and float32 on the CPU unless one is named."""
    if not name:
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise ConfigError(f"--dtype: {name!r} is not one of float32, bfloat16")
    return "bfloat16" if DTYPES[name] is torch.bfloat16 else "float32"


def check_models(models: list[str]) -> None:
    """Before any weight is loaded: each local path is a model directory (hub ids load later)."""
    from anydistill.models.loading import local_dir

    if not models:
        raise ConfigError("--model: give at least one model (a hub id or a local directory)")
    for path in models:
        local = local_dir(path, "--model", "model")
        if local is not None and not (local / "config.json").is_file():
            raise ModelError(f"--model: {path} is not a model directory (no config.json)")


# ---- one generation -----------------------------------------------------------------------


@dataclass
class GreedyRun:
    prefill_s: float
    decode_s: float
    tokens: Tensor  # [batch, new_tokens] on the CPU
    cache_bytes: int
    cache_layers: dict[str, int]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_of(out: Any) -> Any:
    cache = out.get("cache")
    return out.get("past_key_values") if cache is None else cache


def greedy(model: nn.Module, prompt: Tensor, new_tokens: int) -> GreedyRun:
    """Exactly `new_tokens` greedy tokens after `prompt` [batch, L], fed one at a time with the
    model's cache; EOS does not stop it."""
    device = prompt.device
    params = inspect.signature(model.forward).parameters
    # transformers 5 renamed `past_key_values` to `cache`; accept both.
    cache_arg = "cache" if "cache" in params else "past_key_values"
    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # the prompt's full logits would dwarf its cache
    with torch.inference_mode():
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=prompt, **kwargs)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        first = time.perf_counter()
        cache = _cache_of(out)
        del out
        tokens = [token]
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, **{cache_arg: cache}, **kwargs)
            cache = _cache_of(out)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            del out
            tokens.append(token)
        _sync(device)
        end = time.perf_counter()
        return GreedyRun(
            prefill_s=first - start,
            decode_s=end - first,
            tokens=torch.cat(tokens, dim=1).cpu(),
            cache_bytes=cache_bytes(cache),
            cache_layers=cache_layers(cache),
        )


def random_prompt(vocab: int, batch: int, length: int, seed: int) -> Tensor:
    """Token ids drawn from a generator seeded by `seed` and the length (CPU, then moved)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + length)
    return torch.randint(0, vocab, (batch, length), generator=g)


def _text_config(model: nn.Module) -> Any:
    config = model.config  # type: ignore[attr-defined]
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def max_positions(model: nn.Module) -> int | None:
    config = _text_config(model)
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab(model: nn.Module) -> int:
    rows = model.get_input_embeddings().weight.shape[0]  # type: ignore[operator]
    size = getattr(_text_config(model), "vocab_size", None)
    return min(rows, size) if isinstance(size, int) and size > 0 else rows


def _weights_bytes(model: nn.Module) -> int:
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in (*model.parameters(), *model.buffers())
    }
    return sum(storages.values())


def _error(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else repr(err)
    return f"{type(err).__name__}: {first}"[:300]


def measure(
    model: nn.Module, prompt: Tensor, settings: GenerateSettings, device: torch.device
) -> dict[str, Any]:
    """One untimed run, then `settings.repeats` timed ones; medians of the times."""
    peak = 0
    runs: list[GreedyRun] = []

    def run() -> None:
        runs.append(greedy(model, prompt, settings.new_tokens))

    if device.type == "cuda":
        run()  # kernels chosen and compiled for these shapes
        runs.clear()
        for _ in range(settings.repeats):
            peak = max(peak, peak_extra_bytes(run, device))
    else:  # the tracked run is the untimed one: tracking costs time on every op
        peak = peak_extra_bytes(run, device)
        runs.clear()
        for _ in range(settings.repeats):
            run()
    last = runs[-1]
    prefill = statistics.median(r.prefill_s for r in runs)
    decode = statistics.median(r.decode_s for r in runs)
    steps = settings.new_tokens - 1
    return {
        "new_tokens": int(last.tokens.shape[1]),
        "prefill_s": round(prefill, 6),
        "decode_s": round(decode, 6),
        "decode_tokens_per_s": (
            round(settings.batch * steps / decode, 2) if steps and decode > 0 else None
        ),
        "peak_extra_bytes": int(peak),
        "cache_bytes": last.cache_bytes,
        "cache_positions": prompt.shape[1] + settings.new_tokens - 1,
        "cache_layers": last.cache_layers,
    }


# ---- the benchmark ------------------------------------------------------------------------


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _load(path: str, settings: GenerateSettings, device: torch.device) -> nn.Module:
    from anydistill.models.loading import freeze, load_pretrained

    model = load_pretrained(path, field="--model", dtype=DTYPES[settings.dtype])
    return freeze(model.to(device))


def bench_generate(
    models: list[str],
    settings: GenerateSettings,
    device: torch.device,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One record per (model, prompt length), models in order, lengths in order.

    Raises ConfigError (bad settings) and ModelError (a path that is not a model, a model that
    will not load) instead of recording them; every path is checked before any is loaded.
    """
    settings.check()
    check_models(models)
    records: list[dict[str, Any]] = []
    for path in models:
        model = _load(path, settings, device)
        limit = max_positions(model)
        common = {
            "model": path,
            "model_type": str(getattr(_text_config(model), "model_type", "")),
            "batch": settings.batch,
            "device": device.type,
            "dtype": settings.dtype,
            "weights_bytes": _weights_bytes(model),
            "max_position_embeddings": limit,
        }
        vocab = _vocab(model)
        for length in settings.prompt_lens:
            record: dict[str, Any] = {**common, "prompt_len": length}
            if limit is not None and length + settings.new_tokens > limit:
                record["skipped"] = (
                    f"prompt {length} + {settings.new_tokens} new tokens is beyond "
                    f"max_position_embeddings {limit}"
                )
            else:
                prompt = random_prompt(vocab, settings.batch, length, settings.seed).to(device)
                try:
                    record.update(measure(model, prompt, settings, device))
                except (RuntimeError, ValueError) as err:  # out of memory, a shape it refuses
                    record["error"] = _error(err)
                del prompt
                _free(device)
            records.append(record)
            if on_record is not None:
                on_record(record)
        del model
        _free(device)
    return records


# ---- output -------------------------------------------------------------------------------


def _mib(n: object) -> str:
    return f"{int(n) / 2**20:.2f}" if isinstance(n, int) else ""  # type: ignore[arg-type]


def _label(model: str) -> str:
    """A local directory by its last part (its full path is in the record); hub ids whole."""
    from anydistill.models.loading import looks_local

    return Path(model).name or model if looks_local(model) else model


def print_generate_table(records: list[dict[str, Any]], console: Any = None) -> None:
    """One row per (model, prompt length): prefill, decode speed, peak and cache memory; the
    reasons of skipped and failed cases below the table."""
    from rich.console import Console
    from rich.table import Table

    first = records[0] if records else {}
    new = next((r["new_tokens"] for r in records if "new_tokens" in r), "?")
    title = f"generate: greedy, {new} new tokens, batch {first.get('batch')}, {first.get('dtype')}"
    table = Table(title=title)
    names = ("model", "prompt len", "prefill s", "decode tok/s", "peak MiB", "cache MiB")
    for name in names:
        table.add_column(name, justify="left" if name == "model" else "right")
    notes = []
    for r in records:
        label = _label(r["model"])
        problem = r.get("skipped") or r.get("error")
        if problem:
            kind = "skipped" if "skipped" in r else "error"
            table.add_row(label, str(r["prompt_len"]), kind, "", "", "")
            notes.append(f"{kind}: {label} {r['prompt_len']}: {problem}")
            continue
        speed = r["decode_tokens_per_s"]
        table.add_row(
            label,
            str(r["prompt_len"]),
            f"{r['prefill_s']:.4f}",
            "-" if speed is None else f"{speed:,.1f}",
            _mib(r["peak_extra_bytes"]),
            _mib(r["cache_bytes"]),
        )
    out = console or Console()
    out.print(table)
    for note in notes:
        out.print(note, markup=False, highlight=False)


def save_generate(
    out: Path,
    models: list[str],
    settings: GenerateSettings,
    device: torch.device,
    records: list[dict[str, Any]],
) -> None:
    """The records, the settings, the machine and the date as one JSON file, written whole."""
    from anydistill.bench.machine import machine_info
    from anydistill.paths import disk_full_message, is_disk_full

    machine = machine_info(device)
    payload = {
        "benchmark": "generate",
        "date": machine["date"],
        "machine": machine,
        "settings": {**asdict(settings), "models": list(models), "device": device.type},
        "records": records,
    }
    text = json.dumps(payload, indent=1) + "\n"
    tmp = out.with_suffix(out.suffix + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(out)  # readers never see half a record file
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if is_disk_full(err):
            raise ConfigError(
                disk_full_message(out, len(text.encode()), f"{out} is as it was")
            ) from None
        raise ConfigError(
            f"--save: cannot write {out} ({err.strerror or err}); give another path"
        ) from None

"""Load a causal LM from a hub id, a local directory, or a config dict (random weights).

Every way a model can arrive broken (a path typo, an offline hub, a corrupt or incomplete
checkpoint, a misspelt or impossible `init`, an attention backend that is not installed) is
refused with one sentence naming the recipe key, never trained on with random weights.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from anydistill.errors import ModelError
from anydistill.paths import few

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Sizes and counts that must be positive whole numbers (canonical names; aliases such as
# gpt2's n_embd resolve through the config class's attribute_map).
_SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
)
# Keys PretrainedConfig consumes from kwargs without declaring them as fields, and the generic
# keys older transformers declared, which saved config.json files still carry.
_GENERIC_INIT_KEYS = {
    "torch_dtype",
    "num_labels",
    "rope_scaling",
    "rope_theta",
    "partial_rotary_factor",
    "name_or_path",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "per_layer_config",
    "quantization_config",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "tie_word_embeddings",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "finetuning_task",
    "task_specific_params",
    "tokenizer_class",
    "prefix",
    "bos_token_id",
    "pad_token_id",
    "eos_token_id",
    "sep_token_id",
    "decoder_start_token_id",
}


def resolve_dtype(name: str, device: torch.device, frozen: bool) -> torch.dtype:
    """`auto`: bf16 weights for a frozen teacher on GPU, fp32 everywhere else.

    A trained student keeps fp32 master weights; bf16 compute comes from autocast.
    """
    if name != "auto":
        return DTYPES[name]
    return torch.bfloat16 if (frozen and device.type == "cuda") else torch.float32


# ---- local paths and the hub ---------------------------------------------------------------


def looks_local(path: str) -> bool:
    """A string meant as a local path rather than a hub id (`org/name`)."""
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        return True
    first = path.split("/", 1)[0]
    return Path(path).exists() or (bool(first) and Path(first).is_dir())


def local_dir(path: str, field: str, what: str) -> Path | None:
    """The local directory `path` names, None for a hub id; a local-looking path that is not
    a directory is refused before the hub is ever tried (which takes a minute to time out)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if not looks_local(path):
        return None
    if local.exists():
        raise ModelError(f"{field}: {path} is a file, not a {what} directory; give its directory")
    raise ModelError(
        f"{field}: {path} is not a directory (nothing exists at that local path); check the "
        "path, a hub id looks like `org/name`"
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    # The hub reads the variable once at import; a later export still counts for the message.
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


def load_failure(path: str, field: str, what: str, err: BaseException, local: bool) -> ModelError:
    """One sentence for a failed load: an offline hub is named as such, not as the network."""
    if not local and hub_offline():
        return ModelError(
            f"{field}: {path!r} is not a local directory and not in the hub cache, and the hub "
            "is offline (HF_HUB_OFFLINE is set); give a local directory or unset HF_HUB_OFFLINE "
            "to download it"
        )
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return ModelError(f"{field}: cannot load a {what} from {path!r} ({first})")


# ---- pretrained weights --------------------------------------------------------------------


def load_pretrained(
    path: str,
    *,
    field: str,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load weights from a local directory or the hub; one clear sentence when it fails."""
    from safetensors import SafetensorError

    local = local_dir(path, field, "model")
    if local is not None:
        _check_safetensors(local, field)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "trust_remote_code": trust_remote_code,
        # Report every bad tensor ourselves, in one sentence, instead of a RuntimeError.
        "ignore_mismatched_sizes": True,
        "output_loading_info": True,
    }
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(local or path), **kwargs)
    except ImportError as err:
        raise attn_error(err, attn_implementation, field) from None
    except SafetensorError as err:
        raise ModelError(
            f"{field}: a weights file of {path} is truncated or corrupt ({err}); re-download or "
            "re-save the model"
        ) from None
    except (OSError, ValueError) as err:
        if attn_implementation and "attn_implementation" in str(err):
            raise attn_error(err, attn_implementation, field) from None
        raise load_failure(path, field, "causal LM", err, local is not None) from None
    _check_loading_info(model, info, field, path)
    return model


def _check_safetensors(directory: Path, field: str) -> None:
    """Each *.safetensors file has a readable header covering the whole file."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelError(
                f"{field}: {file} is truncated or corrupt ({err}); re-download or re-save the model"
            ) from None


def _check_loading_info(
    model: PreTrainedModel, info: dict[str, Any], field: str, path: str
) -> None:
    """Refuse missing, unexpected or wrongly shaped tensors: they would be random weights."""
    missing = sorted(_really_missing(model, set(info.get("missing_keys") or ())))
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(f"missing {few(missing)}")
    if unexpected:
        problems.append(f"unexpected {few(unexpected)}")
    if mismatched:
        shapes = [f"{k} (file {list(old)}, config {list(new)})" for k, old, new in mismatched]
        problems.append(f"wrong shape {few(shapes)}")
    if problems:
        raise ModelError(
            f"{field}: the checkpoint in {path} does not match its config ("
            + "; ".join(problems)
            + "); it is incomplete or saved for another architecture, so re-save or "
            "re-download the model"
        )


def _really_missing(model: PreTrainedModel, missing: set[str]) -> list[str]:
    """Missing keys transformers does not fill itself: a tied head shares a loaded tensor and
    a non-persistent buffer (rotary inv_freq) is computed, never stored."""
    state = model.state_dict(keep_vars=True)
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    real = []
    for key in missing:
        if key not in state:
            continue
        if by_tensor[id(state[key])] - missing:
            continue
        real.append(key)
    return real


# ---- attention backends --------------------------------------------------------------------


def attn_field(field: str) -> str:
    return field.removesuffix(".path") + ".attn_implementation"


def attn_error(err: BaseException, name: str | None, field: str) -> ModelError:
    """An attention backend that is unknown or whose package is missing, in one sentence."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not name:  # remote code importing a package this environment lacks
        return ModelError(f"{field}: the model needs a package that is not installed ({text})")
    key = attn_field(field)
    if isinstance(err, ValueError):
        return ModelError(
            f"{key}: `{name}` is not an attention implementation transformers knows; use "
            "eager, sdpa, flex_attention or flash_attention_2"
        )
    reason = text.split("the following error:", 1)[-1].strip().split(". ")[0].rstrip(".")
    return ModelError(
        f"{key}: `{name}` cannot be used here ({reason}); install its package (flash-attn for "
        f"flash_attention_2) or set {key} to sdpa"
    )


# ---- random weights from a config ----------------------------------------------------------


def build_from_config(
    init: dict[str, Any], *, field: str, vocab_size: int, dtype: torch.dtype, seed: int
) -> PreTrainedModel:
    """Random-weight model from a transformers config dict; vocab defaults to the tokenizer's."""
    params = dict(init)
    model_type = params.pop("model_type")
    config_class = config_class_for(model_type, field)
    check_init_keys(config_class, params, field, model_type)
    check_init_types(config_class, params, field)
    params.setdefault("vocab_size", vocab_size)
    check_init_sizes(config_class, params, field)
    attn = params.get("attn_implementation")
    try:
        config = AutoConfig.for_model(model_type, **params)
    except ImportError as err:
        raise attn_error(err, attn, field) from None
    except (ValueError, KeyError, TypeError) as err:
        if attn and "attn_implementation" in str(err):
            raise attn_error(err, attn, field) from None
        raise ModelError(f"{field}.init: not a valid `{model_type}` config ({err})") from None
    except StrictDataclassError as err:  # transformers' own checks (e.g. an odd rotary dim)
        cause = err.__cause__ or err
        raise ModelError(f"{field}.init: not a valid `{model_type}` config ({cause})") from None
    # Seed here so a recipe's random model is the same on every run and every rank.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except ImportError as err:
            raise attn_error(err, attn, field) from None
        except (ValueError, TypeError, RuntimeError) as err:
            if attn and "attn_implementation" in str(err):
                raise attn_error(err, attn, field) from None
            raise ModelError(f"{field}.init: cannot build a causal LM ({err})") from None
    return model


def config_class_for(model_type: str, field: str) -> type:
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ModelError(
            f"{field}.init.model_type: `{model_type}` is not a transformers model type"
            + (
                _did_you_mean(str(model_type), list(CONFIG_MAPPING.keys()))
                or "; use one such as llama, qwen2 or gpt2"
            )
        )
    return CONFIG_MAPPING[model_type]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def init_keys(config_class: type) -> set[str]:
    """Every key a config of this class accepts: its fields and __init__ parameters, the
    attributes a default instance has, its aliases, and what PretrainedConfig takes from any."""
    from transformers import GenerationConfig, PretrainedConfig

    keys = set(_GENERIC_INIT_KEYS) | set(GenerationConfig._get_default_generation_params())
    for cls in (config_class, PretrainedConfig):
        keys |= set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
        keys |= {k for k in vars(cls()) if not k.startswith("_")}
        keys |= set(getattr(cls, "attribute_map", {}))
        keys |= {k for k in dir(cls) if isinstance(getattr(cls, k, None), property)}
    return {k for k in keys if not k.startswith("_")}


def check_init_keys(
    config_class: type, params: dict[str, Any], field: str, model_type: str
) -> None:
    """A misspelt key would be stored and ignored, leaving the (huge) default size in place."""
    valid = init_keys(config_class)
    for key in params:
        if key not in valid and not key.startswith("_"):  # `_name_or_path` & co: saved state
            hint = _did_you_mean(key, sorted(valid)) or f"; see {config_class.__name__} for keys"
            raise ModelError(f"{field}.init.{key}: not a `{model_type}` config key{hint}")


def _user_key(config_class: type, params: dict[str, Any], canonical: str) -> str:
    """The key the recipe used for a canonical size (gpt2 says n_embd for hidden_size)."""
    alias = getattr(config_class, "attribute_map", {}).get(canonical)
    return alias if alias in params and canonical not in params else canonical


def check_init_types(config_class: type, params: dict[str, Any], field: str) -> None:
    for canonical in _SIZE_KEYS:
        key = _user_key(config_class, params, canonical)
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ModelError(
                f"{field}.init.{key}: {value!r} is not a whole number; give an integer"
            )


def _default(config_class: type, canonical: str) -> Any:
    """The class's default for a canonical size (None when derived from other keys)."""
    params = inspect.signature(config_class.__init__).parameters
    alias = getattr(config_class, "attribute_map", {}).get(canonical)
    for name in (canonical, alias):
        if name in params and params[name].default is not inspect.Parameter.empty:
            return params[name].default
    return None


def check_init_sizes(config_class: type, params: dict[str, Any], field: str) -> None:
    """Positive sizes, and head counts that divide what they split; checked before the config
    is built, whose own validation would be a traceback (or a silently truncated head)."""

    def name(canonical: str) -> str:
        return f"{field}.init.{_user_key(config_class, params, canonical)}"

    sizes = {
        k: params.get(_user_key(config_class, params, k), _default(config_class, k))
        for k in _SIZE_KEYS
    }
    for key, value in sizes.items():
        if isinstance(value, int) and value < 1:
            raise ModelError(f"{name(key)}: {value} must be a positive integer (at least 1)")
    hidden, heads = sizes["hidden_size"], sizes["num_attention_heads"]
    kv = sizes["num_key_value_heads"] or heads  # unset: one kv head per attention head
    if hidden and heads and sizes["head_dim"] is None and hidden % heads:
        raise ModelError(
            f"{name('hidden_size')}: {hidden} is not a multiple of num_attention_heads "
            f"({heads}); make hidden_size a multiple of num_attention_heads (or set head_dim)"
        )
    if heads and kv and heads % kv:
        raise ModelError(
            f"{name('num_key_value_heads')}: num_attention_heads ({heads}) is not a multiple of "
            f"num_key_value_heads ({kv}); pick num_key_value_heads that divides it"
        )


def max_positions(model: PreTrainedModel) -> int | None:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """The teacher: eval mode, no grads, ever."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

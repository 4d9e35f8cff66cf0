"""What a conversion asks for (`ConvertSpec`) and which teacher layers keep their attention.

A spec names the target architecture and the attention layers to keep, given one of three
ways: the layer indices, a count, or a fraction of the teacher's layers. A count or fraction
keeps evenly spaced layers (`evenly_spaced`): the centre layer of each of k equal blocks,
`floor((i + 1/2) * L / k)` for i = 0..k-1. When L / k = s is a whole number that is every s-th
layer starting at s // 2 (32 layers, 8 kept: 2, 6, 10, ..., 30), the "keep every k-th layer"
rule of Mamba-in-the-Llama, shifted so the first and last blocks are treated alike.

Every refusal is a `ConfigError` whose one sentence names the field under `FIELD`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from anydistill.errors import ConfigError

FIELD = "student.from_teacher.convert"
# The transformers model types a student can become, and the teacher layouts read.
TARGETS: dict[str, str] = {"qwen3_5_text": "Gated DeltaNet", "bamba": "Mamba-2"}
TEACHERS: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class ConvertSpec:
    """A conversion request.

    to: target model type (`TARGETS`). Exactly one of `keep_attention` (layer indices),
    `count` (that many evenly spaced layers) or `fraction` (round(fraction * L) of them) says
    which teacher layers stay attention; every other layer's attention becomes a mixer.

    Per-family options (None = taken from the teacher):
    state_size: the mixer's key width per head, GDN's `linear_key_head_dim` or Mamba-2's
        `mamba_d_state`. Only the teacher's head_dim (the default) lets Q/K initialise it.
    conv_kernel: the short causal convolution's width (both families; 4 as in both papers).
    seed: seeds the parameters that start from random values, so a conversion is repeatable.
    """

    to: str
    keep_attention: list[int] | None = None
    count: int | None = None
    fraction: float | None = None
    state_size: int | None = None
    conv_kernel: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConvertSpec:
        return cls(**data)


def check_target(to: str) -> str:
    """`to` when it is a supported model type; a ConfigError sentence otherwise."""
    if to not in TARGETS:
        raise ConfigError(
            f"{FIELD}.to: {to!r} is not a conversion target; choose one of "
            f"{', '.join(TARGETS)} ({', '.join(f'{k}: {v}' for k, v in TARGETS.items())})"
        )
    return to


def check_teacher_type(model_type: str) -> str:
    """A teacher layout this package reads; anything else is refused naming the field."""
    if model_type not in TEACHERS:
        raise ConfigError(
            f"{FIELD}.to: a {model_type!r} teacher cannot be converted; the supported teacher "
            f"layouts are {', '.join(TEACHERS)} (Llama-style decoders)"
        )
    return model_type


def evenly_spaced(num_layers: int, count: int) -> list[int]:
    """The centre layer of each of `count` equal blocks of `num_layers` layers."""
    return [math.floor((i + 0.5) * num_layers / count) for i in range(count)]


def kept_layers(spec: ConvertSpec, num_layers: int) -> list[int]:
    """The sorted layer indices that keep attention; refuses a spec that does not say it once."""
    given = [n for n in ("keep_attention", "count", "fraction") if getattr(spec, n) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"{FIELD}: give exactly one of keep_attention, count or fraction "
            f"(got {', '.join(given) if given else 'none'})"
        )
    if spec.keep_attention is not None:
        bad = [i for i in spec.keep_attention if not isinstance(i, int) or not 0 <= i < num_layers]
        if bad:
            raise ConfigError(
                f"{FIELD}.keep_attention: {bad} is out of range; the teacher has layers "
                f"0..{num_layers - 1}"
            )
        return sorted(set(spec.keep_attention))
    if spec.count is not None:
        if not 0 <= spec.count <= num_layers:
            raise ConfigError(
                f"{FIELD}.count: {spec.count} is out of range; give 0..{num_layers} "
                "(the teacher's layer count)"
            )
        return evenly_spaced(num_layers, spec.count) if spec.count else []
    if not 0.0 <= spec.fraction <= 1.0:
        raise ConfigError(f"{FIELD}.fraction: {spec.fraction} is out of range; give 0..1")
    count = round(spec.fraction * num_layers)
    return evenly_spaced(num_layers, count) if count else []


def check_options(spec: ConvertSpec) -> None:
    """Refuses family options no mixer can be built with."""
    if spec.conv_kernel < 1:
        raise ConfigError(f"{FIELD}.conv_kernel: {spec.conv_kernel} must be at least 1")
    if spec.state_size is not None and spec.state_size < 1:
        raise ConfigError(f"{FIELD}.state_size: {spec.state_size} must be at least 1")

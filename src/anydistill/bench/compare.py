"""TRL's and Liger-Kernel's chunked distillation losses, called the way their trainers do.

Only used by `anydistill bench loss --compare trl,liger`, in the same process as ours, so a
speed ratio is measured side by side. Neither package is a dependency: a missing one turns
into an error record. Both report the mean over tokens of a JSD(beta) family divergence
(beta = 0 forward KL, beta = 1 reverse KL, TRL/GKD convention, the same as ours).
"""

from __future__ import annotations

import functools

from torch import Tensor

COMPARE_ENGINES = ("trl", "liger")
# Our divergence name -> the beta of the JSD family both libraries implement.
_BETA = {"fkl": 0.0, "rkl": 1.0, "jsd": 0.5}


class Unsupported(Exception):
    """The library has no implementation of this divergence (not a failure of the case)."""


@functools.cache
def _liger(beta: float, compiled: bool):
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    return LigerFusedLinearJSDLoss(
        weight_hard_loss=0.0, weight_soft_loss=1.0, beta=beta, temperature=1.0, compiled=compiled
    )


def compare_loss(
    engine: str, hs: Tensor, s_w: Tensor, ht: Tensor, t_w: Tensor, labels: Tensor, divergence: str
) -> Tensor:
    """Mean per-token divergence from TRL's or Liger's fused linear + divergence loss."""
    if divergence not in _BETA:
        raise Unsupported(divergence)
    beta = _BETA[divergence]
    package = {"trl": "trl==1.16.0", "liger": "liger-kernel==0.8.5"}.get(engine)
    try:
        return _call(engine, beta, hs, s_w, ht, t_w, labels)
    except ModuleNotFoundError as err:
        raise ImportError(f"{err.name} is not installed (pip install {package})") from None


def _call(
    engine: str, beta: float, hs: Tensor, s_w: Tensor, ht: Tensor, t_w: Tensor, labels: Tensor
) -> Tensor:
    if engine == "trl":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        per_token, _entropy = ChunkedDivergenceFunction.apply(hs, s_w, None, ht, t_w, None, beta)
        return per_token.mean()
    if engine == "liger":
        return _liger(beta, hs.is_cuda)(hs, s_w, ht, t_w, labels)
    raise ValueError(f"unknown comparison engine {engine!r}; choose trl or liger")

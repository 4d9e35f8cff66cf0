"""TAID's adaptive interpolation parameter t (Shing et al. 2025, ICLR).

Update rule, once per optimizer step n with that step's TAID objective J_n:

    delta_n = (J_{n-1} - J_n) / (J_{n-1} + eps)               relative improvement
    m_n     = beta * m_{n-1} + (1 - beta) * delta_n           momentum
    t_{n+1} = min(t_end, max(t_linear(n+1), t_n + alpha * sigmoid(m_n) * (1 - t_n)))

where t_linear goes linearly from t_start to t_end over `total_steps`. Defaults are the
paper's and the official code's: t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99.

One deviation, written down: the official code leaves t untouched on the very first update
(there is no previous loss yet); here the first update still applies the linear floor, so
`value >= t_linear(steps_done)` always holds.

All state is plain Python floats/ints, so a checkpoint restores t bitwise.
"""

from __future__ import annotations

import math
from typing import Any

_EPS = 1e-15


def _sigmoid(x: float) -> float:
    # Two branches so that math.exp never overflows for large |x|.
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class TaidSchedule:
    """The interpolation parameter t of TAID, moved by the loss's relative improvement."""

    def __init__(
        self,
        total_steps: int,
        t_start: float = 0.4,
        t_end: float = 1.0,
        alpha: float = 5e-4,
        beta: float = 0.99,
        adaptive: bool = True,
    ) -> None:
        """`adaptive=False` gives the paper's ablation: the plain linear schedule."""
        if total_steps < 1:
            raise ValueError(f"TAID total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ValueError(
                f"TAID needs 0 <= t_start <= t_end <= 1, got t_start={t_start}, t_end={t_end}"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"TAID alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"TAID beta must be in [0, 1), got {beta}")
        self.total_steps = int(total_steps)
        self.t_start = float(t_start)
        self.t_end = float(t_end)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.adaptive = bool(adaptive)
        self._t = self.t_start
        self._momentum = 0.0
        self._prev_loss: float | None = None
        self._steps = 0

    @property
    def value(self) -> float:
        """The current t, to be used for the next step's target."""
        return self._t

    @property
    def steps(self) -> int:
        """How many updates (optimizer steps) have been applied."""
        return self._steps

    def linear(self, step: int) -> float:
        """The linear floor t_start -> t_end over `total_steps`, held at t_end afterwards."""
        frac = min(1.0, step / self.total_steps)
        return self.t_start + (self.t_end - self.t_start) * frac

    def update(self, loss: float) -> None:
        """Advance t after one optimizer step whose TAID term value was `loss`."""
        self._steps += 1
        loss = float(loss)
        t = self._t
        # A non-finite loss carries no usable signal; only the linear floor moves then.
        if self.adaptive and math.isfinite(loss):
            if self._prev_loss is not None:
                delta = (self._prev_loss - loss) / (self._prev_loss + _EPS)
                self._momentum = self.beta * self._momentum + (1.0 - self.beta) * delta
                t = t + self.alpha * _sigmoid(self._momentum) * (1.0 - t)
            self._prev_loss = loss
        self._t = min(self.t_end, max(self.linear(self._steps), t))

    def state_dict(self) -> dict[str, Any]:
        """Plain floats/ints: safe to store as JSON or in a torch checkpoint."""
        return {
            "t": self._t,
            "momentum": self._momentum,
            "prev_loss": self._prev_loss,
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; the next `update` continues bitwise."""
        self._t = float(state["t"])
        self._momentum = float(state["momentum"])
        prev = state["prev_loss"]
        self._prev_loss = None if prev is None else float(prev)
        self._steps = int(state["steps"])

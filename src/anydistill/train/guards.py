"""Stop a run that has stopped learning, instead of saving a dead model and exiting 0."""

from __future__ import annotations

import math

from anydistill.errors import TrainingError


def nan_message(step: int, loss: float, terms: dict[str, float]) -> str:
    bad = [k for k, v in terms.items() if not math.isfinite(v)]
    which = f"term `{bad[0]}` is {terms[bad[0]]}" if bad else "every term is finite"
    return (
        f"step {step}: the loss is {loss} ({which}); check the data and the teacher for NaN/inf, "
        "lower train.lr, or use train.precision=fp32"
    )


class DeadGradientGuard:
    """A gradient norm that is exactly zero while the loss is not, several steps running, is
    a dead student (e.g. weights blown up by a huge learning rate: the logits saturate and
    nothing flows back); a non-finite gradient norm would poison the weights at once."""

    def __init__(self, lr: float, patience: int = 3) -> None:
        self.lr = lr
        self.patience = patience
        self.first_dead: int | None = None

    def check(self, step: int, loss: float, grad_norm: float | None) -> None:
        if grad_norm is None:
            return
        if not math.isfinite(grad_norm):
            raise TrainingError(
                f"step {step}: the gradient norm is {grad_norm} while the loss is {loss:.4g} "
                f"(the weights or activations overflowed); lower train.lr (now {self.lr:g}) and "
                "start again with output.overwrite=true"
            )
        if grad_norm != 0.0 or loss == 0.0:
            self.first_dead = None
            return
        self.first_dead = self.first_dead or step
        if step - self.first_dead + 1 >= self.patience:
            raise TrainingError(
                f"steps {self.first_dead}-{step}: the gradient is exactly zero while the loss is "
                f"{loss:.4g}, so the student has stopped learning (most likely its weights blew "
                f"up); lower train.lr (now {self.lr:g}) and start again with "
                "output.overwrite=true"
            )

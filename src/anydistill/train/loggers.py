"""Metric sinks: metrics.jsonl always; TensorBoard and W&B when enabled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anydistill.errors import ConfigError


class MetricsLog:
    """Appends one JSON object per line and flushes, so a killed run keeps what it logged."""

    def __init__(
        self,
        path: Path,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "anydistill",
        config: dict | None = None,
    ):
        self.path = path
        self.file = path.open("a")
        self.tb = None
        self.wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.tensorboard is on but tensorboard is not installed; "
                    "`pip install anydistill[tensorboard]` or set train.tensorboard=false"
                ) from None
            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise ConfigError(
                    "train.wandb is on but wandb is not installed; "
                    "`pip install anydistill[wandb]` or set train.wandb=false"
                ) from None
            self.wandb = wandb_lib.init(project=wandb_project, name=path.parent.name, config=config)

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        step = row.get("step", 0)
        prefix = row.get("kind", "train")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in numbers.items()}, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def truncate_after(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint so the log matches an unbroken run."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)

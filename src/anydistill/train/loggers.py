"""Metric sinks: metrics.jsonl always; TensorBoard and W&B when enabled."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from anydistill.errors import ConfigError

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per line and flushes, so a killed run keeps what it logged.

    `keep_rows` cuts the file to the rows a resumed checkpoint had seen, so a resumed run's
    log reads like an unbroken one's. Every row is also kept in memory: if the file is deleted
    or replaced while the run writes it, it is written again whole (with a warning) instead of
    the rows going into a file nobody can see.
    """

    def __init__(
        self,
        path: Path,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str = "anydistill",
        config: dict | None = None,
        keep_rows: int | None = 0,
    ):
        self.path = path
        lines = _valid_lines(path)
        self.lines = lines if keep_rows is None else lines[:keep_rows]
        self.file = self._rewrite()
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

    @property
    def rows(self) -> int:
        return len(self.lines)

    def _rewrite(self):
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in self.lines))
        tmp.replace(self.path)
        return self.path.open("a")

    def _still_there(self) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self.file.fileno())
        return (on_disk.st_ino, on_disk.st_dev) == (mine.st_ino, mine.st_dev)

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row)
        if not self._still_there():
            log.warning("%s was deleted or replaced during the run; writing it again", self.path)
            self.file.close()
            self.file = self._rewrite()
        self.file.write(line + "\n")
        self.file.flush()
        self.lines.append(line)
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


def _valid_lines(path: Path) -> list[str]:
    """The complete JSON rows of an existing log (a line cut by a kill is dropped)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            kept.append(line)
    return kept


def rows_up_to(path: Path, step: int) -> int:
    """How many leading rows were logged at or before `step` (checkpoints written before
    rows were counted)."""
    count = 0
    for line in _valid_lines(path):
        if json.loads(line).get("step", 0) > step:
            break
        count += 1
    return count

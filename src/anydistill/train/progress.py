"""A rich progress bar with loss, tokens/s and ETA; silent when disabled."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    def __init__(self, total: int, done: int, enabled: bool = True, label: str = "train"):
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(label, total=total, completed=done, loss="-", tps="-")

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.progress.update(
            self.task, completed=step, loss=f"{loss:.4f}", tps=f"{tokens_per_s:,.0f}"
        )

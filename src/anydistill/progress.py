"""Rich progress bars: training (loss, tokens/s, generation vs training time, ETA) and
counted work (upfront generation); silent when disabled."""

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
            TextColumn("{task.fields[split]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(
            label, total=total, completed=done, loss="-", tps="-", split=""
        )

    def __enter__(self) -> StepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(
        self,
        step: int,
        loss: float,
        tokens_per_s: float,
        gen_s: float | None = None,
        train_s: float | None = None,
    ) -> None:
        """`gen_s` / `train_s`: cumulative seconds generating / training, shown when given."""
        split = "" if gen_s is None else f"gen {gen_s:,.1f}s train {train_s or 0.0:,.1f}s"
        self.progress.update(
            self.task,
            completed=step,
            loss=f"{loss:.4f}",
            tps=f"{tokens_per_s:,.0f}",
            split=split,
        )


class CountProgress:
    """A bar for work counted in items (upfront generation: sequences done of total)."""

    def __init__(self, total: int, done: int, label: str, enabled: bool = True):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.progress.add_task(label, total=total, completed=done)

    def __enter__(self) -> CountProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

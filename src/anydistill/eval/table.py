"""Pretty-print eval results: student vs teacher side by side."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_eval(result: dict[str, float], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column("student", justify="right")
    table.add_column("teacher", justify="right")
    names = sorted({k.split("/", 1)[1] for k in result if k.startswith("student/")})
    for name in names:
        s = result.get(f"student/{name}")
        t = result.get(f"teacher/{name}")
        table.add_row(
            name, f"{s:.4f}" if s is not None else "-", f"{t:.4f}" if t is not None else "-"
        )
    for key in ("kl_teacher_student", "top1_agreement", "eval_tokens", "eval_bytes"):
        if key in result:
            table.add_row(key, f"{result[key]:.4f}", "")
    console.print(table)

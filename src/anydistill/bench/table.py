"""Tables for people: one row per case, memory in MiB, errors as relative values."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_loss_table(records: list[dict], console: Console | None = None) -> None:
    table = Table(title="loss: forward + backward")
    for name in (
        "shape",
        "divergence",
        "engine",
        "ms",
        "TFLOP/s",
        "peak MiB",
        "loss err",
        "grad err",
    ):
        table.add_column(
            name, justify="left" if name in ("shape", "divergence", "engine") else "right"
        )
    for r in records:
        if "error" in r:
            table.add_row(r["shape"], r["divergence"], r["engine"], r["error"][:48], "", "", "", "")
            continue
        table.add_row(
            r["shape"],
            r["divergence"],
            r["engine"],
            f"{r['ms']:.1f}",
            f"{r['tflops']:.2f}",
            f"{r['peak_extra_bytes'] / 2**20:.0f}",
            f"{r['loss_rel_err']:.1e}",
            f"{r['grad_rel_err']:.1e}",
        )
    (console or Console()).print(table)

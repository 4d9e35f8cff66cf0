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


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 2**10:.1f} KiB"


def print_step_table(records: list[dict[str, object]], console: object = None) -> None:
    """One row per variant: throughput, the split of a step in ms, memory, MFU and the loss."""
    from rich.console import Console
    from rich.table import Table

    first = records[0] if records else {}
    title = (
        f"step: {first.get('teacher')} -> {first.get('student')}, "
        f"{first.get('batch')}x{first.get('seq_len')} tokens, {first.get('divergence')} "
        "(times: ms per step)"
    )
    table = Table(title=title)
    names = ("variant", "tokens/s", "step", "teacher", "student f+b", "(loss)", "optim")
    names += ("peak mem", "MFU", "loss")
    for name in names:
        table.add_column(name, justify="left" if name == "variant" else "right")
    for r in records:
        label = f"{r['variant']}/{r['engine']}" if r["variant"] == "anydistill" else r["variant"]
        if "error" in r:
            table.add_row(str(label), str(r["error"])[:60], *[""] * (len(names) - 2))
            continue
        mfu = r.get("mfu")
        table.add_row(
            str(label),
            f"{r['tokens_per_s']:,.0f}",
            f"{r['step_ms']:.1f}",
            f"{r['teacher_forward_ms']:.1f}",
            f"{r['student_forward_backward_ms']:.1f}",
            f"{r['loss_ms']:.1f}",
            f"{r['optimizer_ms']:.1f}",
            _bytes(int(r["peak_memory_bytes"])),  # type: ignore[call-overload]
            "-" if mfu is None else f"{mfu:.1%}",
            f"{r['loss']:.5g}",
        )
    (console or Console()).print(table)  # type: ignore[attr-defined]

"""Read a run's ``metrics.jsonl`` and draw its PNG plots.

The reader tolerates what real runs leave behind: a last line cut short by a kill, and steps
logged twice because a run resumed from an earlier checkpoint. Plots are drawn with the Agg
canvas on bare ``Figure`` objects (no pyplot), so no display, global backend or GUI state is
ever touched, and each PNG is written to a temp name and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["draw_plots", "find_metrics", "make_plots", "numeric", "read_metrics", "series"]

METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
_DPI = 110


def find_metrics(run_dir: Path) -> Path:
    """Return ``run_dir/metrics.jsonl``, or raise a one-sentence ``FileNotFoundError``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir} is a file, not a run directory: pass the runs/NAME directory that "
            "`anydistill train` created."
        )
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run directory {run_dir} does not exist: pass the runs/NAME directory that "
            "`anydistill train` created."
        )
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Cannot make a report: no {METRICS_FILE} in {run_dir}: is this a run directory "
            "made by `anydistill train`?"
        )
    return path


def numeric(value: Any) -> bool:
    """True for real numbers (bools are excluded: they are flags, not metrics)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _append_resumed(rows: list[dict], row: dict) -> None:
    """Append ``row``; if its step does not advance, it starts a resumed segment.

    A resume replays from a checkpoint older than the last logged step, so everything the
    killed run logged at or after that step is superseded: drop it, keeping the last
    occurrence of each step and the series strictly increasing in step.
    """
    step = row["step"]
    while rows and rows[-1]["step"] >= step:
        rows.pop()
    rows.append(row)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Parse a ``metrics.jsonl`` into ``(train_rows, eval_rows)``, each sorted by step.

    Corrupt or truncated lines, non-object lines and rows without a numeric ``step`` are
    skipped with a ``RuntimeWarning``. Rows of other kinds are ignored. When a step repeats
    (a resumed run), the last occurrence wins and rows the resume superseded are dropped.
    """
    path = Path(path)
    train: list[dict] = []
    evals: list[dict] = []
    skipped: list[int] = []
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped.append(lineno)
                continue
            if not isinstance(row, dict) or not numeric(row.get("step")):
                skipped.append(lineno)
                continue
            kind = row.get("kind")
            if kind == "train":
                _append_resumed(train, row)
            elif kind == "eval":
                _append_resumed(evals, row)
    if skipped:
        shown = ", ".join(str(n) for n in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"{path}: skipped {len(skipped)} unreadable line(s) (line {shown}); "
            "a run killed mid-write leaves a truncated last line.",
            RuntimeWarning,
            stacklevel=2,
        )
    return train, evals


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """The ``(steps, values)`` of ``key`` over the rows where it is a number."""
    steps: list[float] = []
    values: list[float] = []
    for row in rows:
        value = row.get(key)
        if numeric(value):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def _keys(rows: Sequence[dict], pred: Any) -> list[str]:
    """Keys satisfying ``pred`` across all rows, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            if pred(key):
                seen.setdefault(key, None)
    return list(seen)


def _all_positive(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and all(v > 0 for v in finite)


def _save(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically (temp file in the same dir, then rename)."""
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly: never depend on the global backend
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=_DPI)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; plots are meant to be shared and served
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _style(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers: no "52.5"
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _plot_loss(train: list[dict], out: Path) -> Path | None:
    keys = _keys(train, lambda k: k == "loss" or k.startswith("term/"))
    lines = [(k, *series(train, k)) for k in keys]
    lines = [line for line in lines if line[1]]
    if not lines:
        return None
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.add_subplot()
    for key, steps, values in lines:
        # The total is the headline: draw it bolder than its terms.
        ax.plot(
            steps,
            values,
            label=key,
            linewidth=2.0 if key == "loss" else 1.2,
            marker="o" if len(steps) == 1 else None,  # a lone point draws no line segment
        )
    if _all_positive([v for _, _, vals in lines for v in vals]):
        ax.set_yscale("log")
    _style(ax, "Training loss and its terms", "loss")
    return _save(fig, out / "loss.png")


def _plot_lr(train: list[dict], out: Path) -> Path | None:
    keys = _keys(train, lambda k: k == "lr" or k.startswith("lr/"))
    lines = [(k, *series(train, k)) for k in keys]
    lines = [line for line in lines if line[1]]
    if not lines:
        return None
    fig = Figure(figsize=(7, 3.5), layout="tight")
    ax = fig.add_subplot()
    for key, steps, values in lines:
        ax.plot(
            steps,
            values,
            label=key if len(lines) > 1 else None,
            marker="o" if len(steps) == 1 else None,
        )
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _style(ax, "Learning rate", "lr")
    return _save(fig, out / "lr.png")


def _teacher_line(ax: Axes, steps: list[float], values: list[float]) -> None:
    """Teacher reference, dashed: a horizontal line when it never changes (the usual case)."""
    finite = [v for v in values if math.isfinite(v)]
    if finite and max(finite) - min(finite) <= 1e-9 * max(1.0, abs(finite[0])):
        ax.axhline(finite[0], color="black", linestyle="--", label="teacher")
    else:
        ax.plot(steps, values, color="black", linestyle="--", marker=".", label="teacher")


def _plot_eval(evals: list[dict], out: Path) -> Path | None:
    panels = []
    for metric, title in (("ce", "Cross-entropy (nats/token)"), ("bits_per_byte", "Bits/byte")):
        student = series(evals, f"student/{metric}")
        teacher = series(evals, f"teacher/{metric}")
        if student[0] or teacher[0]:
            panels.append((title, student, teacher))
    if not panels:
        return None
    fig = Figure(figsize=(6 * len(panels), 4), layout="tight")
    for i, (title, student, teacher) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        if student[0]:
            ax.plot(*student, marker="o", label="student")
        if teacher[0]:
            _teacher_line(ax, *teacher)
        _style(ax, title, title.split(" (")[0].lower())
    return _save(fig, out / "eval.png")


def _plot_agreement(evals: list[dict], out: Path) -> Path | None:
    panels = [
        (title, series(evals, key))
        for key, title in (
            ("top1_agreement", "Top-1 agreement with teacher"),
            ("kl_teacher_student", "KL(teacher || student)"),
        )
    ]
    panels = [p for p in panels if p[1][0]]
    if not panels:
        return None
    fig = Figure(figsize=(6 * len(panels), 4), layout="tight")
    for i, (title, (steps, values)) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        ax.plot(steps, values, marker="o")
        _style(ax, title, title.split(" with")[0])
    return _save(fig, out / "agreement.png")


def draw_plots(run_dir: Path, train: list[dict], evals: list[dict]) -> list[Path]:
    """Draw plots from rows already read by :func:`read_metrics`; see :func:`make_plots`."""
    out = Path(run_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_loss(train, out),
        _plot_lr(train, out),
        _plot_eval(evals, out),
        _plot_agreement(evals, out),
    ]
    return [p for p in written if p is not None]


def make_plots(run_dir: Path) -> list[Path]:
    """Draw the run's plots into ``run_dir/plots/`` and return the PNG paths written.

    ``loss.png`` (total and ``term/*`` vs step), ``lr.png``, ``eval.png`` (student vs
    teacher ce and bits/byte) and ``agreement.png`` (top-1 agreement, KL). A plot whose data
    is absent from ``metrics.jsonl`` is skipped and not returned. Raises
    ``FileNotFoundError`` if ``run_dir`` or its ``metrics.jsonl`` is missing.
    """
    train, evals = read_metrics(find_metrics(Path(run_dir)))
    return draw_plots(Path(run_dir), train, evals)

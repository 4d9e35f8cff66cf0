"""Bar charts for the report: agreement by token-frequency bucket, acceptance by position.

Both come from single results (the final eval, a `speculate.json` saved in the run), not from
series over steps, so they live apart from the per-step plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from anydistill.report.plots import PLOTS_DIR, _save, numeric

SPECULATE_FILE = "speculate.json"


def _bars(labels: list[str], values: list[float], title: str, ylabel: str, path: Path) -> Path:
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def agreement_by_frequency_plot(results: dict[str, Any], run_dir: Path) -> Path | None:
    items = [
        (k.split("/", 1)[1], v)
        for k, v in results.items()
        if k.startswith("agree_freq/") and numeric(v)  # a hand-edited eval.json may hold text
    ]
    if not items:
        return None
    labels = [name.replace("rank_", "") for name, _ in items]
    return _bars(
        labels,
        [float(v) for _, v in items],
        "Top-1 agreement by target-token frequency rank",
        "agreement",
        run_dir / PLOTS_DIR / "agreement_by_frequency.png",
    )


def read_speculation(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SPECULATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: no section, no crash
        return None
    return data if isinstance(data, dict) else None


def acceptance_plot(spec: dict[str, Any], run_dir: Path) -> Path | None:
    rates = spec.get("acceptance_by_position") or []
    if not isinstance(rates, list) or not rates or not all(r is None or numeric(r) for r in rates):
        return None
    reached = [(i, float(r)) for i, r in enumerate(rates, start=1) if r is not None]
    if not reached:
        return None
    return _bars(
        [str(i) for i, _ in reached],
        [r for _, r in reached],
        f"Speculative acceptance by draft position (gamma {spec.get('gamma')})",
        "accepted share",
        run_dir / PLOTS_DIR / "acceptance_by_position.png",
    )

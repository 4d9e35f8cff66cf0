"""The dataset card of `anydistill generate`: ``card.json`` (everything, for programs),
``card.md`` (the same for people, removal lists cut to their first rows) and two histograms,
``pass_rate.png`` (per prompt) and ``lengths.png`` (characters per trace, sampled and kept).

The card holds no times or dates, so a resumed run writes the same card as an unbroken one.
Plots use bare Agg figures (no pyplot state), written to a temp name and renamed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anydistill.traces.store import Trace, write_atomic

__all__ = ["build_card", "write_card"]

_SHOWN = 20  # removal rows per list in card.md


def verification(traces: Sequence[Trace], rates: Sequence[float | None], n: int) -> dict:
    """Verdict counts, and how many prompts had none or all of their n samples right."""
    scored = [r for r in rates if r is not None]
    return {
        "correct": sum(t.verified == "correct" for t in traces),
        "incorrect": sum(t.verified == "incorrect" for t in traces),
        "unverified": sum(t.verified == "unverified" for t in traces),
        "prompts_verified": len(scored),
        "prompts_unverified": len(rates) - len(scored),
        f"prompts_0_of_{n}_correct": sum(r == 0.0 for r in scored),
        f"prompts_{n}_of_{n}_correct": sum(r == 1.0 for r in scored),
        "mean_pass_rate": round(sum(scored) / len(scored), 4) if scored else None,
    }


def build_card(
    *,
    teacher: str,
    data: str,
    settings: dict[str, Any],
    n: int,
    traces: Sequence[Trace],
    rates: Sequence[float | None],
    stages: list[dict[str, Any]],
    removed: dict[str, list[dict[str, Any]]],
    kept: Sequence[Trace],
    sources: Sequence[str],
) -> dict[str, Any]:
    from anydistill import __version__

    # A prompt's origin beside its index, so a removal can be found in the input.
    named = {
        stage: [
            {**row, "source": sources[row["prompt"]]} if "prompt" in row else row for row in rows
        ]
        for stage, rows in removed.items()
    }
    return {
        "tool": f"anydistill {__version__} generate",
        "teacher": teacher,
        "data": data,
        "settings": settings,
        "prompts": len(rates),
        "samples_per_prompt": n,
        "verification": verification(traces, rates, n),
        "stages": stages,
        "removed": named,
        "output": {
            "file": "traces.jsonl",
            "rows": len(kept),
            "prompts": len({t.prompt for t in kept}),
            "correct": sum(t.verified == "correct" for t in kept),
            "incorrect": sum(t.verified == "incorrect" for t in kept),
            "unverified": sum(t.verified == "unverified" for t in kept),
        },
    }


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(k, "")) for k in keys) + " |" for row in rows]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    v, out = card["verification"], card["output"]
    lines = [
        "# Reasoning traces",
        "",
        f"Made by {card['tool']} from **{card['teacher']}** on {card['data']}: "
        f"{card['prompts']} prompts x {card['samples_per_prompt']} samples; "
        f"**{out['rows']} traces** of {out['prompts']} prompts kept in `traces.jsonl` "
        f"({out['correct']} correct, {out['incorrect']} incorrect, "
        f"{out['unverified']} unverified).",
        "",
        "## Verification",
        "",
        *_table([v]),
        "",
        "![pass rate per prompt](pass_rate.png) ![trace lengths](lengths.png)",
        "",
        "## Stages",
        "",
        *_table(card["stages"]),
    ]
    for stage, rows in card["removed"].items():
        if not rows:
            continue
        more = len(rows) - _SHOWN
        lines += ["", f"## Removed by {stage}", "", *_table(rows[:_SHOWN])]
        if more > 0:
            lines += ["", f"... and {more} more in card.json."]
    lines += ["", "## Settings", "", "```json", json.dumps(card["settings"], indent=1), "```", ""]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plots(
    card: dict[str, Any],
    traces: Sequence[Trace],
    kept: Sequence[Trace],
    rates: Sequence[float | None],
) -> dict[str, bytes]:
    from matplotlib.figure import Figure

    n = card["samples_per_prompt"]
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.add_subplot()
    scored = [r for r in rates if r is not None]
    # One bin per possible k/n, centred on it.
    edges = [(k - 0.5) / n for k in range(n + 2)]
    ax.hist(scored, bins=edges, color="#4c72b0", edgecolor="white")
    ax.set_xlabel("pass rate of the prompt's samples")
    ax.set_ylabel("prompts")
    ax.set_title(f"{len(scored)} verified prompts, {n} samples each")
    ax.set_xlim(-0.5 / n, 1 + 0.5 / n)
    pass_png = _png(fig)

    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.add_subplot()
    sampled = [len(t.completion) for t in traces]
    longest = max(sampled, default=1) or 1
    bins = [longest * i / 30 for i in range(31)]
    ax.hist(sampled, bins=bins, color="#bbbbbb", label=f"sampled ({len(sampled)})")
    ax.hist(
        [len(t.completion) for t in kept], bins=bins, color="#55a868", label=f"kept ({len(kept)})"
    )
    ax.set_xlabel("characters per trace")
    ax.set_ylabel("traces")
    ax.legend()
    return {"pass_rate.png": pass_png, "lengths.png": _png(fig)}


def write_card(
    out: Path,
    card: dict[str, Any],
    traces: Sequence[Trace],
    kept: Sequence[Trace],
    rates: Sequence[float | None],
) -> None:
    """card.json, card.md and the two PNGs, each written whole."""
    for name, data in _plots(card, traces, kept, rates).items():
        write_atomic(out / name, data)
    write_atomic(out / "card.md", card_markdown(card))
    write_atomic(out / "card.json", json.dumps(card, indent=1, ensure_ascii=False) + "\n")

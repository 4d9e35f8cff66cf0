"""`ConversionPlan.describe`: the plan as a table a person reads before converting.

Rows that differ only in their layer index are folded into one row listing the layers, so a
32-layer plan stays a screen long. What cannot be initialised (`fresh`) is listed again at
the end, with what the conversion drops and why it is or is not exact.
"""

from __future__ import annotations

import re
from collections import OrderedDict

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def _ranges(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, n in enumerate(layers):
        if start is None:
            start = n
        if i + 1 == len(layers) or layers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def _fold(sources) -> list[tuple[str, str, str, str, str]]:
    """(pattern, layers, kind, sources, how) rows, the layer index written as {i}."""
    rows: OrderedDict[tuple, list[int]] = OrderedDict()
    for s in sources:
        m = _LAYER.search(s.name)
        layer = int(m.group(1)) if m else None
        pattern = _LAYER.sub("model.layers.{i}.", s.name)
        srcs = ", ".join(_LAYER.sub("", x) for x in s.sources)
        key = (pattern, s.kind, srcs, s.how)
        rows.setdefault(key, [])
        if layer is not None:
            rows[key].append(layer)
    return [(k[0], _ranges(v) if v else "-", k[1], k[2], k[3]) for k, v in rows.items()]


def describe(plan) -> str:
    fam = plan.family
    lines = [
        f"Conversion {plan.teacher.model_type} -> {plan.spec.to}: "
        f"{plan.teacher.num_layers} layers; attention kept in "
        f"[{_ranges(plan.kept) or 'none'}], {fam.label} in [{_ranges(plan.replaced) or 'none'}]",
        f"Exactness: {plan.exact_note}",
        "",
    ]
    rows = _fold(plan.sources)
    head = ("student parameter", "layers", "kind", "from (teacher)", "how")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for r in [head, *rows]:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        )
    if plan.student_config.tie_word_embeddings:
        lines.append("lm_head.weight is tied to model.embed_tokens.weight, as in the teacher")
    fresh = [r for r in rows if r[2] == "fresh"]
    lines.append("")
    if fresh:
        lines.append("Cannot be initialised from the teacher (fresh, random init):")
        lines += [f"  {r[0]} (layers {r[1]}): {r[4]}" for r in fresh]
    else:
        lines.append("Every student parameter is initialised from the teacher or set.")
    if plan.dropped:
        dropped = _fold([type(plan.sources[0])(n, "dropped") for n in plan.dropped])
        lines.append("Teacher tensors not used: " + "; ".join(f"{r[0]} ({r[1]})" for r in dropped))
    lines += [f"Note: {n}" for n in plan.notes]
    return "\n".join(lines)

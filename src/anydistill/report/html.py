"""Write ``run_dir/report.html``: one self-contained page that says how close the student got.

The page has inline CSS and no scripts; images are referenced relatively (``plots/x.png``) so
the run directory can be copied or served as a unit. Everything read from the run directory
(run name, metric keys and values, the config) is HTML-escaped.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from html import escape
from pathlib import Path
from typing import Any

from anydistill.errors import DataError
from anydistill.paths import disk_full_message, is_disk_full
from anydistill.report.bars import acceptance_plot, agreement_by_frequency_plot, read_speculation
from anydistill.report.plots import PLOTS_DIR, draw_plots, find_metrics, numeric, read_metrics

__all__ = ["write_report"]

REPORT_FILE = "report.html"
_SIDES = ("student", "teacher")
# Headline metrics first, in this order; any other key found follows alphabetically.
_PAIRED_ORDER = ("ce", "ppl", "bits_per_byte")
_SHARED_ORDER = ("top1_agreement", "kl_teacher_student")
_LABELS = {
    "ce": "cross-entropy (nats/token)",
    "ppl": "perplexity",
    "bits_per_byte": "bits/byte",
    "top1_agreement": "top-1 agreement",
    "kl_teacher_student": "KL(teacher \u2016 student)",
}
_NOT_METRICS = {"kind", "step"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { margin-top: 2rem; font-size: 1.2rem; }
.sub { color: #656d76; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.8rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; } td.shared { text-align: center; }
figure { margin: 1rem 0; } img { max-width: 100%; border: 1px solid #d0d7de; }
pre { background: #f6f8fa; padding: 1rem; overflow-x: auto; border-radius: 6px; }
""".strip()


def _fmt(value: Any) -> str:
    """Format a metric value for a table cell (unescaped)."""
    if isinstance(value, bool) or not numeric(value):
        return json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts (e.g. per-task scores) into ``a/b/c`` keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _final_eval(run_dir: Path, evals: list[dict]) -> tuple[dict[str, Any], str]:
    """The final eval results and where they came from: ``eval.json``, else the last eval row."""
    path = run_dir / "eval.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.warn(
                f"{path} is unreadable ({exc}); using the last eval in metrics.jsonl.",
                RuntimeWarning,
                stacklevel=3,
            )
        else:
            if isinstance(data, dict):
                return data, "eval.json"
            warnings.warn(
                f"{path} does not hold a JSON object; using the last eval in metrics.jsonl.",
                RuntimeWarning,
                stacklevel=3,
            )
    if evals:
        return evals[-1], f"the last eval in metrics.jsonl (step {_fmt(evals[-1]['step'])})"
    return {}, ""


def _ordered(names: Iterable[str], first: tuple[str, ...]) -> list[str]:
    names = set(names)
    return [n for n in first if n in names] + sorted(names - set(first))


def _eval_table(results: dict[str, Any]) -> str:
    """Student and teacher side by side, the gap between them, then the shared metrics."""
    flat = {k: v for k, v in _flatten(results).items() if k not in _NOT_METRICS}
    paired: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    for key, value in flat.items():
        side, _, metric = key.partition("/")
        if side in _SIDES and metric:
            paired.setdefault(metric, {})[side] = value
        else:
            shared[key] = value
    rows = []
    for metric in _ordered(paired, _PAIRED_ORDER):
        student, teacher = paired[metric].get("student"), paired[metric].get("teacher")
        gap = student - teacher if numeric(student) and numeric(teacher) else None
        cells = [_fmt(v) if v is not None else "\u2014" for v in (student, teacher, gap)]
        rows.append(
            f"<tr><td>{escape(_LABELS.get(metric, metric))}</td>"
            + "".join(f"<td>{escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    for key in _ordered(shared, _SHARED_ORDER):
        rows.append(
            f"<tr><td>{escape(_LABELS.get(key, key))}</td>"
            f'<td class="shared" colspan="3">{escape(_fmt(shared[key]))}</td></tr>'
        )
    head = "<tr><th>metric</th><th>student</th><th>teacher</th><th>student \u2212 teacher</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _train_table(row: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>"
        for k, v in _flatten(row).items()
        if k != "kind"
    )
    head = "<tr><th>metric</th><th>value</th></tr>"
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename: readers never see half a page."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(run_dir: Path) -> Path:
    """Draw the plots and write ``run_dir/report.html``; return the report's path.

    The page holds the run name, the final eval (``eval.json`` if present, else the last eval
    row) with student and teacher side by side, the last training metrics, the plots and the
    resolved ``config.yaml``. Raises ``FileNotFoundError`` if ``run_dir`` or its
    ``metrics.jsonl`` is missing, ``DataError`` (one sentence) when the report cannot be
    written there or the metrics cannot be read.
    """
    run_dir = Path(run_dir)
    metrics = find_metrics(run_dir)
    _check_writable(run_dir)
    try:
        return _write(run_dir, metrics)
    except OSError as err:  # unreadable metrics, a disk that filled up meanwhile
        if is_disk_full(err):
            raise DataError(disk_full_message(run_dir, None, "the last report is intact")) from None
        where = err.filename or run_dir
        raise DataError(f"cannot make the report: {where}: {err.strerror or err}") from None


def _check_writable(run_dir: Path) -> None:
    """Before drawing anything: the page and its plots have somewhere to go."""
    plots, page = run_dir / PLOTS_DIR, run_dir / REPORT_FILE
    if plots.exists() and not plots.is_dir():
        raise DataError(f"{plots} is a file, but the report draws its plots there; move it away")
    if page.is_dir():
        raise DataError(f"{page} is a directory, but the report is written there; move it away")
    for where in (run_dir, plots):
        if where.is_dir() and not os.access(where, os.W_OK | os.X_OK):
            raise DataError(
                f"{where} is not writable, so the report cannot be written; make it writable "
                "(chmod u+w) or copy the run somewhere you can write"
            )


def _write(run_dir: Path, metrics: Path) -> Path:
    train, evals = read_metrics(metrics)
    plots = draw_plots(run_dir, train, evals)
    name = run_dir.resolve().name

    results, source = _final_eval(run_dir, evals)
    flat_results = _flatten(results)
    spec = read_speculation(run_dir)
    extra = [agreement_by_frequency_plot(flat_results, run_dir)]
    extra.append(acceptance_plot(spec, run_dir) if spec else None)
    plots += [p for p in extra if p is not None]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>anydistill report: {escape(name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(name)}</h1>",
        f'<p class="sub">anydistill run report \u00b7 {len(train)} training log rows, '
        f"{len(evals)} evals</p>",
        "<h2>Final evaluation</h2>",
    ]
    if results:
        parts += [f'<p class="sub">From {escape(source)}.</p>', _eval_table(results)]
    else:
        parts.append("<p>No evaluation results yet.</p>")

    if spec:
        parts.append("<h2>Speculative decoding (this run as the drafter)</h2>")
        keys = (
            "acceptance_rate",
            "mean_accepted",
            "speedup",
            "greedy_identical",
            "gamma",
            "temperature",
            "prompts",
            "target",
        )
        rows = "".join(
            f"<tr><td>{escape(k)}</td><td>{escape(_fmt(spec[k]))}</td></tr>"
            for k in keys
            if k in spec
        )
        parts.append(f"<table><tbody>{rows}</tbody></table>")

    parts.append("<h2>Last training metrics</h2>")
    parts.append(_train_table(train[-1]) if train else "<p>No training metrics yet.</p>")

    parts.append("<h2>Plots</h2>")
    if plots:
        for path in plots:
            src = path.relative_to(run_dir).as_posix()
            parts.append(f'<figure><img src="{escape(src)}" alt="{escape(path.stem)}"></figure>')
    else:
        parts.append("<p>Nothing to plot yet.</p>")

    parts.append("<h2>Resolved config</h2>")
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(f"<pre>{escape(config.read_text(encoding='utf-8', errors='replace'))}</pre>")
    else:
        parts.append("<p>No config.yaml in this run directory.</p>")
    parts.append("</body></html>\n")

    out = run_dir / REPORT_FILE
    _atomic_write_text(out, "\n".join(parts))
    return out

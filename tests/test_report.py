"""Tests for anydistill.report: metrics.jsonl -> PNG plots and report.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from anydistill.report import make_plots, read_metrics, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _train(step: int, loss: float, **extra: float) -> dict:
    row = {
        "kind": "train",
        "step": step,
        "loss": loss,
        "term/fkl": loss * 0.6,
        "term/ce": loss * 1.4,
        "lr": 1e-4 * min(1.0, step / 20),
        "grad_norm": 0.8,
        "tokens_per_s": 5123.0,
        "tokens": 4096 * step,
        "elapsed_s": 0.8 * step,
    }
    row.update(extra)
    return row


def _eval(step: int, teacher: bool = True) -> dict:
    row = {
        "kind": "eval",
        "step": step,
        "student/ce": 3.0 - step / 100,
        "student/ppl": 20.0 - step / 10,
        "student/bits_per_byte": 2.5 - step / 200,
        "kl_teacher_student": 1.0 - step / 200,
        "top1_agreement": 0.5 + step / 500,
    }
    if teacher:
        row |= {"teacher/ce": 1.5, "teacher/ppl": 4.5, "teacher/bits_per_byte": 1.3}
    return row


def _write_run(run_dir: Path, lines: list[str], config: str = "model:\n  student: tiny\n") -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (run_dir / "config.yaml").write_text(config, encoding="utf-8")
    return run_dir


def _resumed_run_lines(teacher: bool = True) -> list[str]:
    """Steps 10..60, killed, resumed from step 40 (steps 50, 60 relogged), truncated tail."""
    rows = [_train(s, 3.0 - s / 100) for s in range(10, 70, 10)]
    rows.insert(5, _eval(50, teacher))
    rows += [_train(50, 9.5), _eval(50, teacher), _train(60, 9.6), _train(70, 2.2)]
    rows += [_eval(70, teacher), _train(80, 2.0, **{"term/hidden": 0.25})]
    lines = [json.dumps(r) for r in rows]
    lines.append(json.dumps(_train(90, 1.9))[:37])  # killed mid-write
    return lines


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "runs" / "tiny-run", _resumed_run_lines())


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_read_metrics_skips_corrupt_lines_and_keeps_last_of_resumed_steps(run_dir: Path) -> None:
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable line"):
        train, evals = read_metrics(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in train]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80]
    # The resumed run's values win over the killed run's at the same step.
    assert train[4]["loss"] == 9.5 and train[5]["loss"] == 9.6
    assert [r["step"] for r in evals] == [50, 70]


def test_read_metrics_drops_rows_a_resume_superseded(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rows = [_train(s, 1.0) for s in (10, 20, 30)] + [_train(15, 2.0), _train(25, 2.0)]
    rows.append({"kind": "other", "step": 1})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n[1, 2]\n{}\n")
    with pytest.warns(RuntimeWarning, match="skipped 2"):
        train, evals = read_metrics(path)
    assert [r["step"] for r in train] == [10, 15, 25]
    assert evals == []


def test_make_plots_writes_valid_pngs(run_dir: Path) -> None:
    with pytest.warns(RuntimeWarning):
        paths = make_plots(run_dir)
    names = sorted(p.name for p in paths)
    assert names == ["agreement.png", "eval.png", "loss.png", "lr.png"]
    for path in paths:
        assert path.parent == run_dir / "plots"
        _assert_png(path)
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == names


def test_write_report_contents(run_dir: Path) -> None:
    (run_dir / "eval.json").write_text(
        json.dumps(_eval(80) | {"student/accuracy": 0.4375, "kind": "eval"})
    )
    with pytest.warns(RuntimeWarning):
        report = write_report(run_dir)
    assert report == run_dir / "report.html"
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert "<h1>tiny-run</h1>" in text
    # Final eval from eval.json: student vs teacher side by side, plus extra keys.
    assert "From eval.json" in text
    assert "<td>cross-entropy (nats/token)</td><td>2.2</td><td>1.5</td><td>0.7</td>" in text
    assert "<td>bits/byte</td><td>2.1</td><td>1.3</td>" in text
    assert "<td>perplexity</td><td>12</td><td>4.5</td>" in text
    assert "<td>accuracy</td><td>0.4375</td><td>\u2014</td>" in text
    assert "top-1 agreement" in text and ">0.66<" in text
    assert "KL(teacher" in text and ">0.6<" in text
    # Last training row (step 80) with its late-appearing term.
    assert "<td>term/hidden</td><td>0.25</td>" in text
    assert "<td>tokens</td><td>327,680</td>" in text
    for name in ("loss", "lr", "eval", "agreement"):
        assert f'<img src="plots/{name}.png"' in text
        _assert_png(run_dir / "plots" / f"{name}.png")
    assert "<pre>model:\n  student: tiny\n</pre>" in text
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_report_falls_back_to_last_eval_row_without_teacher(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "student-only", _resumed_run_lines(teacher=False))
    with pytest.warns(RuntimeWarning):
        text = write_report(run_dir).read_text(encoding="utf-8")
    assert "the last eval in metrics.jsonl (step 70)" in text
    assert "<td>cross-entropy (nats/token)</td><td>2.3</td><td>\u2014</td><td>\u2014</td>" in text
    assert '<img src="plots/eval.png"' in text
    _assert_png(run_dir / "plots" / "eval.png")


def test_plots_skipped_when_data_absent(tmp_path: Path) -> None:
    rows = [{"kind": "train", "step": s, "loss": -1.0 + s} for s in range(3)]
    run_dir = _write_run(tmp_path / "bare", [json.dumps(r) for r in rows])
    paths = make_plots(run_dir)
    assert [p.name for p in paths] == ["loss.png"]  # non-positive loss: linear y, still drawn
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "No evaluation results yet." in text
    assert len(re.findall(r"<img ", text)) == 1


def test_empty_metrics_still_reports(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path / "empty", [])
    (run_dir / "config.yaml").unlink()
    assert make_plots(run_dir) == []
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "Nothing to plot yet." in text and "No config.yaml" in text


def test_missing_run_dir_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_missing_metrics_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        write_report(tmp_path)
    msg = str(info.value)
    assert f"no metrics.jsonl in {tmp_path}" in msg
    assert "is this a run directory made by `anydistill train`?" in msg
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        make_plots(tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_html_escaping(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    rows = [_train(10, 1.0, **{"term/<b>x</b>": 0.5}), _eval(10) | {"note": evil}]
    run_dir = _write_run(
        tmp_path / "run<img src=x onerror=alert(1)>&",
        [json.dumps(r) for r in rows],
        config=f"name: {evil}\nurl: 'a&b'\n",
    )
    text = write_report(run_dir).read_text(encoding="utf-8")
    assert "<script>" not in text and "onerror=alert(1)>" not in text
    assert "<b>x</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<h1>run&lt;img src=x onerror=alert(1)&gt;&amp;</h1>" in text
    assert "a&amp;b" in text and "term/&lt;b&gt;x&lt;/b&gt;" in text

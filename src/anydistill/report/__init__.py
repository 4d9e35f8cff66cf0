"""Run reports: ``metrics.jsonl`` -> PNG plots and a self-contained ``report.html``."""

from anydistill.report.html import write_report
from anydistill.report.plots import make_plots, read_metrics

__all__ = ["make_plots", "read_metrics", "write_report"]

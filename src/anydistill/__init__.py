"""anydistill: distill any teacher language model into any student."""

__version__ = "0.1.0"

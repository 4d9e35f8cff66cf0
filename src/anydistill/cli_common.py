"""What every command shares: one-sentence failures, and third-party logging and progress bars
kept out of our output (ours is the one to read)."""

from __future__ import annotations

import logging
import os
from typing import NoReturn

import typer


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # our own bar is the one to watch
    except ImportError:
        pass


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with status 2 (no traceback)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)

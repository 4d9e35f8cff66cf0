"""What every command shares: one-sentence failures, and third-party logging and progress bars
kept out of our output (ours is the one to read)."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import typer
from typer.core import TyperGroup

try:  # typer >= 0.24 carries its own copy of click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as cx


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


class OneLineErrors(TyperGroup):
    """A bad argument (`--batch-size 0`, an unknown option) is one `error:` line with the
    reason and where to read more, exit 2, instead of click's usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except cx.NoArgsIsHelpError as err:
            typer.echo(err.format_message())
            rv = 2
        except cx.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "anydistill"
            typer.echo(f"error: {err.format_message()} (see `{where} --help`)", err=True)
            rv = 2
        except cx.ClickException as err:
            typer.echo(f"error: {err.format_message()}", err=True)
            rv = err.exit_code
        except typer.Abort:
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

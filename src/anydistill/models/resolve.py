"""Where a model named on the command line or in a recipe lives: a run, a folder or a hub id."""

from __future__ import annotations

from pathlib import Path

from anydistill.errors import ModelError


def model_dir(path: str) -> str:
    """A run directory stands for its final student; anything else is a model dir or hub id."""
    final = Path(path).expanduser() / "final"
    return str(final) if final.is_dir() else path


def resolve_model(path: str, field: str) -> str:
    """`model_dir`, checked: a run must have its final/ student, a local folder must hold a
    saved model; one sentence naming `field` otherwise (a hub id is left to the loader)."""
    local = Path(path).expanduser()
    if local.is_file():
        raise ModelError(
            f"{field}: {path} is a file; give a run directory, a model directory or a hub id"
        )
    if not local.is_dir():
        return path
    final = local / "final"
    if (local / "config.yaml").is_file() and not final.is_dir():
        raise ModelError(
            f"{field}: {path} is a run with no final/ student yet; finish it with "
            "`anydistill train` (it resumes from the last checkpoint)"
        )
    found = final if final.is_dir() else local
    if not (found / "config.json").is_file():
        raise ModelError(
            f"{field}: {found} holds no saved model (no config.json); give a run directory "
            "with a final/ student, a model directory or a hub id"
        )
    return str(found)

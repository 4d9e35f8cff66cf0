"""What every bad-input test checks: exit 2, one `error:` line naming the key or file, no
traceback, and the file system as it was (except what the command may create)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from anydistill.cli import app

runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def fails_with(result, message: str) -> str:
    """The one `error:` line of a failed command, checked to hold `message`."""
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    assert message in errors[0], errors[0]
    return errors[0]


def tree_state(*roots: Path) -> dict[str, str]:
    """path -> content hash (or 'dir') of everything under `roots`."""
    state: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in sorted([root, *root.rglob("*")]):
            if path.is_dir():
                state[str(path)] = "dir"
            elif path.is_file():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_unchanged(
    before: dict[str, str],
    *roots: Path,
    may_create: tuple[str, ...] = (),
    ignore=(".anydistill-lock",),
):
    """Nothing under `roots` changed, except new paths whose name starts with `may_create`
    (and the run lock's own contents: the pid of the last process that held it)."""
    after = tree_state(*roots)
    changed = [p for p in before if after.get(p) != before[p] and Path(p).name not in ignore]
    assert not changed, f"changed or removed: {changed}"
    new = [p for p in after if p not in before and not Path(p).name.startswith(may_create)]
    assert not new or may_create == ("*",), f"created: {new}"


def fails_cleanly(args: list, message: str, *roots: Path, may_create: tuple[str, ...] = ()):
    """Run the CLI with `args`; it must fail with `message` and leave `roots` untouched."""
    before = tree_state(*roots)
    line = fails_with(run_cli(*args), message)
    assert_unchanged(before, *roots, may_create=may_create)
    return line

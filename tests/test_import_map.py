"""The package map holds: no package imports one above it in docs/architecture.md's layers,
so there is no import cycle between packages (lazy imports inside functions count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "anydistill"
MAP = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """{top-level module or package: its layer}, read from the map's `layers` block."""
    text = MAP.read_text()
    block = re.search(r"<!-- layers -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md lost its `<!-- layers -->` block"
    out = {}
    for level, line in enumerate(block.group(1).strip().splitlines()):
        for name in line.split("#")[0].split():
            out[name] = level
    return out


def _module(path: Path, src: Path) -> str:
    return ".".join(("anydistill", *path.relative_to(src).with_suffix("").parts))


def _imported(path: Path, src: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every anydistill import in `path`."""
    mod = _module(path, src)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, name] if name else base)
            out.append((name, node.lineno))
    return [(n, line) for n, line in out if n == "anydistill" or n.startswith("anydistill.")]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def edges(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(importer package, imported package, where) across packages."""
    out = []
    for path in sorted(src.rglob("*.py")):
        here = _top(_module(path, src))
        for name, line in _imported(path, src):
            there = _top(name)
            if there and there != here:
                out.append((here, there, f"{path.relative_to(src)}:{line} imports {name}"))
    return out


def upward(src: Path = SRC) -> list[str]:
    """Imports of a package on the same or a higher layer (a module off the map counts)."""
    level = layers()
    top = len(level) + 1
    return [
        where for here, there, where in edges(src) if level.get(there, top) >= level.get(here, -1)
    ]


def test_every_package_is_on_the_map():
    names = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted(names - set(layers()))
    assert not missing, f"add {missing} to the layers block of docs/architecture.md"


def test_no_import_runs_up_the_map():
    bad = upward()
    assert not bad, "imports that run up (or across) the map:\n" + "\n".join(bad)


def test_no_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for here, there, _ in edges():
        graph.setdefault(here, set()).add(there)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, f"packages on an import cycle: {cycles}"


@pytest.mark.parametrize("source", ["from anydistill.train import step", "import anydistill.eval"])
def test_the_checker_sees_an_upward_import(tmp_path, source):
    """The check itself can fail: an upward import planted in a copy of the tree is found."""
    copy = tmp_path / "anydistill"
    for path in SRC.rglob("*.py"):
        target = copy / path.relative_to(SRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    (copy / "data" / "planted.py").write_text(source + "\n")
    assert [w for w in upward(copy) if "planted.py" in w]

"""docs/architecture.md is the one map of the house: it names every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import hf_segformer

PACKAGE = Path(hf_segformer.__file__).resolve().parent
ROOT = PACKAGE.parent
MAP = ROOT / "docs" / "architecture.md"


def documented_modules() -> set[str]:
    """Module paths (relative to the package) drawn in the map's first code block, folders nested by indentation."""
    block = MAP.read_text().split("```", 2)[1]
    folders: list[tuple[int, str]] = []  # (indent, folder name)
    found = set()
    for line in block.splitlines()[1:]:
        match = re.match(r"^( *)([\w./]+)(?:\s|$)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        if not (name.endswith("/") or name.endswith(".py")):
            continue  # a continuation line of a description
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = "/".join([f for _, f in folders] + [name.rstrip("/")])
        if name.endswith("/"):
            folders.append((indent, name.rstrip("/")))
        else:
            found.add(path)
    return found


def package_modules() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def test_the_map_names_every_module_and_only_modules_that_exist():
    documented, actual = documented_modules(), package_modules()
    assert not actual - documented, f"modules missing from docs/architecture.md: {sorted(actual - documented)}"
    assert not documented - actual, f"docs/architecture.md names modules that do not exist: {sorted(documented - actual)}"


def test_the_package_and_the_readme_point_to_the_map():
    assert "docs/architecture.md" in (hf_segformer.__doc__ or "")
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()

"""The installed layout: shoal.agent, shoal.controller and shoal.protocol, nothing top-level.

The source folders agent/, controller/ and protocol/ install under ``shoal`` through
pyproject.toml's package-dir mapping; these tests keep the mapping, the front door
and the import rules (``lint-imports``) true as modules are added.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("agent", "controller", "protocol")
PYTHON_TREES = ("agent", "controller", "protocol", "shoal", "tests", "bench", "examples")


def setuptools_table() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        table: dict[str, object] = tomllib.load(file)["tool"]["setuptools"]
    return table


def source_packages() -> set[str]:
    """Every package folder under the source folders, by the name it installs as."""
    found = {"shoal"}
    for folder in SOURCE_FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(ROOT).parts
            found.add(".".join(("shoal", *relative)))
    return found


def test_every_package_folder_is_installed() -> None:
    listed = setuptools_table()["packages"]
    assert isinstance(listed, list)
    assert set(listed) == source_packages()


def test_the_source_folders_map_to_shoal_packages() -> None:
    mapping = setuptools_table()["package-dir"]
    assert mapping == {
        "shoal": "shoal",
        "shoal.agent": "agent",
        "shoal.controller": "controller",
        "shoal.protocol": "protocol",
    }
    for folder in SOURCE_FOLDERS:
        link = ROOT / "shoal" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()


def python_files() -> list[Path]:
    files: list[Path] = []
    for tree in PYTHON_TREES:
        base = ROOT / tree
        if tree == "shoal":
            files += sorted(base.glob("*.py"))  # not through the links
            continue
        files += sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def top_level_imports(path: Path) -> list[str]:
    """Imports of the bare folder names, which would load a second copy of a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [
            f"{path.relative_to(ROOT)}:{node.lineno}: {name}"
            for name in names
            if name.split(".")[0] in SOURCE_FOLDERS
        ]
    return bad


def test_nothing_imports_the_bare_folder_names() -> None:
    offenders = [line for path in python_files() for line in top_level_imports(path)]
    assert offenders == []


def test_inside_a_package_imports_are_relative() -> None:
    offenders: list[str] = []
    for folder in SOURCE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.ImportFrom)
                    and node.level == 0
                    and node.module is not None
                    and node.module.startswith(f"shoal.{folder}")
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}")
    assert offenders == []


def test_the_front_door() -> None:
    import shoal
    from shoal.controller import Fleet

    assert shoal.Fleet is Fleet
    assert "Fleet" in shoal.__all__
    with pytest.raises(AttributeError):
        _ = shoal.NoSuchThing  # type: ignore[attr-defined]


def test_import_rules_hold() -> None:
    """No import cycles in agent/ or controller/; protocol imports neither side; the
    controller imports the agent only where ``shoal up`` assembles both; only the
    transport modules import nats (the contracts are in pyproject.toml)."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "lint-imports (import-linter, in the dev extra) is not installed"
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

"""The project's wheels, built on this machine with its own pip, offline from then on.

:func:`build_wheelhouse` makes the project's wheel and every dependency's (uvloop and the
build backend too), for the agent image and for agents installed into venvs as a host
service would be; :func:`build_variant` makes the project's wheel again under another
version, with optional edits, for upgrade tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = ["pyproject.toml", "README.md", "protocol", "agent", "controller", "shoal"]
"""What the wheel is built from: the build context .dockerignore lets through."""
PIP_TIMEOUT = 600


def copy_source(destination: Path) -> Path:
    """A copy of what the wheel is built from (setuptools writes into the source tree)."""
    destination.mkdir(parents=True)
    for name in CONTEXT:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(  # shoal/'s links to the top folders stay links
                path,
                destination / name,
                symlinks=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            shutil.copy2(path, destination / name)
    return destination


def pip(*args: str, what: str) -> None:
    argv = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout[-3000:]}{result.stderr}"


def build_wheelhouse(workdir: Path) -> Path:
    """The project's wheel, its dependencies (uvloop included) and its build backend."""
    source = copy_source(workdir / "src")
    wheels = workdir / "wheels"
    pip(
        "wheel",
        "--wheel-dir",
        str(wheels),
        f"{source}[uvloop]",
        "setuptools>=68",
        "wheel",
        what="pip wheel",
    )
    return wheels


def project_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def build_variant(
    workdir: Path, wheelhouse: Path, version: str, edits: Mapping[str, tuple[str, str]] = {}
) -> Path:
    """The project's wheel at ``version`` in ``workdir/wheels``, built offline with the
    wheelhouse's build backend; ``edits`` maps a source file to (text, replacement)."""
    source = copy_source(workdir / f"src-{version}")
    old = project_version()
    changes = {
        "pyproject.toml": (f'version = "{old}"', f'version = "{version}"'),
        "agent/__init__.py": (f'__version__ = "{old}"', f'__version__ = "{version}"'),
        **edits,
    }
    for name, (text, replacement) in changes.items():
        path = source / name
        content = path.read_text(encoding="utf-8")
        assert text in content, f"{text!r} is not in {name}"
        path.write_text(content.replace(text, replacement, 1), encoding="utf-8")
    wheels = workdir / "wheels"
    pip(
        "wheel",
        "--no-deps",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--wheel-dir",
        str(wheels),
        str(source),
        what=f"pip wheel of version {version}",
    )
    return wheels

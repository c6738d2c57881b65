"""Every exception Shoal defines joins the one tree rooted at ShoalError."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import pytest

from shoal.protocol.errors import ErrorCode, ShoalError

PACKAGES = ("shoal.protocol", "shoal.agent", "shoal.controller")


def _modules() -> list[str]:
    names: list[str] = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            names.append(info.name)
    return names


def _defines_no_class(name: str) -> bool:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return not any(isinstance(node, ast.ClassDef) for node in ast.walk(tree))


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        if name.endswith(".__main__"):
            # Importing it runs the program; read it instead.
            assert _defines_no_class(name), f"{name} defines a class: import it in the walk"
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
            ):
                found[f"{name}.{value.__qualname__}"] = value
    return found


EXCEPTIONS = _defined_exceptions()


def test_the_walk_finds_exceptions_in_every_package() -> None:
    for package_name in PACKAGES:
        assert any(name.startswith(package_name + ".") for name in EXCEPTIONS), package_name


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_exception_derives_from_shoal_error(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert issubclass(cls, ShoalError), f"{name} does not derive from ShoalError"
    assert isinstance(cls.code, ErrorCode)


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_exception_has_a_one_line_docstring(name: str) -> None:
    doc = EXCEPTIONS[name].__dict__.get("__doc__")
    assert doc, f"{name} has no docstring"
    assert "\n" not in doc.strip(), f"{name}'s docstring is more than one line"

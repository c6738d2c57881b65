"""The reader's plumbing: errors naming the file and key, interpolation, scalar values."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from shoal.protocol.service import ServiceSpec

from .interpolation import TemplateError, substitute
from .project import ComposeError
from .values import (
    FALSE_WORDS,
    TRUE_WORDS,
    model_error,
    parse_bytes,
    parse_duration,
    type_name,
)


class Reader:
    """Reads values of one compose file; every error names the file and the key."""

    def __init__(self, path: Path, label: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.label = label
        self.base = path.absolute().parent
        self.env = env
        self.warnings: list[str] = []
        self.volumes: dict[str, str] = {}
        """Top-level volumes: the key in the file -> the engine's volume name."""

    # -- errors and plumbing

    def fail(self, where: str, message: str) -> NoReturn:
        raise ComposeError(f"{self.label}: {where}: {message}" if where else message)

    def lookup(self, name: str) -> str | None:
        return self.env.get(name)

    def unset(self, name: str) -> None:
        warning = f"variable {name} is not set; using an empty string"
        if warning not in self.warnings:
            self.warnings.append(warning)

    def interpolate(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 50:
            self.fail(where, "nested too deeply")
        if isinstance(value, str):
            try:
                return substitute(value, self.lookup, self.unset)
            except TemplateError as exc:
                self.fail(where, str(exc))
        if isinstance(value, list):
            return [
                self.interpolate(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)
            ]
        if isinstance(value, dict):
            return {
                key: self.interpolate(item, f"{where}.{key}", depth + 1)
                for key, item in value.items()
            }
        return value

    def mapping(self, value: Any, where: str, *, null_ok: bool = True) -> dict[str, Any]:
        if value is None and null_ok:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, not {type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(where, f"key {key!r} must be a string")
        return value

    def check_keys(
        self,
        value: dict[str, Any],
        where: str,
        allowed: Iterable[str],
        refused: Mapping[str, str] | None = None,
    ) -> None:
        allowed = set(allowed)
        for key in value:
            if key in allowed or key.startswith("x-"):
                continue
            reason = (refused or {}).get(key, "not supported by Shoal")
            self.fail(f"{where}.{key}", reason)

    def model(self, cls: type[Any], where: str, **values: Any) -> Any:
        try:
            return cls(**values)
        except ValidationError as exc:
            loc, message = model_error(exc)
            self.fail(f"{where}{loc}" if cls is ServiceSpec else where, message)

    # -- scalars

    def string(self, value: Any, where: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.fail(where, f"must be a string, not {type_name(value)}")

    def boolean(self, value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        self.fail(where, f"must be true or false, not {value!r}")

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
            return int(value.strip())
        self.fail(where, f"must be an integer, not {value!r}")

    def number(self, value: Any, where: str) -> float:
        result: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                result = None
        if result is None or not math.isfinite(result):
            self.fail(where, f"must be a number, not {value!r}")
        return result

    def duration(self, value: Any, where: str) -> float:
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds):
            self.fail(where, f'must be a duration like "30s", "1m30s" or "500ms", not {value!r}')
        if seconds < 0:
            self.fail(where, f"must not be negative, not {value!r}")
        return seconds

    def size(self, value: Any, where: str) -> int:
        result: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif isinstance(value, str):
            result = parse_bytes(value)
        if result is None:
            self.fail(
                where, f'must be a size like "512m", "1g" or a number of bytes, not {value!r}'
            )
        if result <= 0:
            self.fail(where, f"must be more than 0 bytes, not {value!r}")
        return result

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {type_name(value)}")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(value))

    def words(self, value: Any, where: str) -> tuple[str, ...] | None:
        """command / entrypoint: a string split like a shell would, or a list."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                self.fail(where, f"cannot split {value!r}: {exc}")
        return self.strings(value, where)

    def no_service_ref(self, value: str, where: str) -> str:
        if value.startswith("service:"):
            self.fail(where, f"{value!r}: service: references are not supported by Shoal")
        return value

    def labels(self, value: Any, where: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if value is None:
            return out
        if isinstance(value, list):
            for i, item in enumerate(value):
                key, _, val = self.string(item, f"{where}[{i}]").partition("=")
                if not key:
                    self.fail(f"{where}[{i}]", f"{item!r} has no label name")
                out[key] = val
            return out
        for key, val in self.mapping(value, where).items():
            if val is None:
                out[key] = ""
            elif isinstance(val, bool):
                out[key] = "true" if val else "false"
            else:
                out[key] = self.string(val, f"{where}.{key}")
        return out

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        """A mapping of strings, or a list of ``KEY=VALUE`` (``driver_opts``, ``sysctls``)."""
        return self.labels(value, where)

    def strings_or_string(self, value: Any, where: str) -> tuple[str, ...]:
        """One string or a list of them (``dns``, ``tmpfs``)."""
        if isinstance(value, list):
            return self.strings(value, where)
        return (self.string(value, where),)

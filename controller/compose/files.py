"""Secrets and configs: the top-level definitions, their values, and a service's mounts.

A value is read here (``file:``, ``environment:``, ``content:``) and kept in a
:class:`SecretValues`, which never prints a value; the spec carries only its digest.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shoal.protocol.sealing import value_digest
from shoal.protocol.service import FILE_NAME_PATTERN, FileMount

from .reader import Reader
from .yamlfile import LeadingZeroInt

MAX_VALUE = 256 * 1024
"""Bytes of one secret or config value (it travels in the deploy request, sealed)."""

Kind = Literal["secret", "config"]
_KEYS: dict[Kind, tuple[str, ...]] = {
    "secret": ("file", "environment", "external", "name", "labels"),
    "config": ("file", "environment", "content", "external", "name", "labels"),
}
_REFUSED = {
    "driver": "secret drivers are Swarm's; not supported by Shoal",
    "driver_opts": "secret drivers are Swarm's; not supported by Shoal",
    "template_driver": "not supported by Shoal",
}


@dataclass(frozen=True)
class FileSource:
    """One top-level secret or config: its value, or the name of one stored on the host."""

    kind: Kind
    key: str
    external_name: str | None
    digest: str


class SecretValues(Mapping[str, bytes]):
    """Values by ``secret:NAME`` / ``config:NAME``; its repr shows names only."""

    def __init__(self, values: dict[str, bytes] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> bytes:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"SecretValues({sorted(self._values)})"

    def merged(self, other: SecretValues) -> SecretValues:
        return SecretValues({**self._values, **other._values})


def read_files(
    reader: Reader, raw: Any, kind: Kind, values: dict[str, bytes]
) -> dict[str, FileSource]:
    """The top-level ``secrets`` or ``configs``; values land in ``values``."""
    section = f"{kind}s"
    sources: dict[str, FileSource] = {}
    for key, body in reader.mapping(raw, section).items():
        where = f"{section}.{key}"
        if not re.fullmatch(FILE_NAME_PATTERN, key):
            reader.fail(where, f"a {kind} name is letters, digits, '_', '.' or '-'")
        config = reader.mapping(body, where, null_ok=False)
        reader.check_keys(config, where, _KEYS[kind], _REFUSED)
        external = config.get("external") is not None and reader.boolean(
            config["external"], f"{where}.external"
        )
        given = [k for k in ("file", "environment", "content") if config.get(k) is not None]
        if external:
            if given:
                reader.fail(f"{where}.{given[0]}", f"an external {kind} has no value in the file")
            if kind == "config":
                reader.fail(
                    f"{where}.external",
                    "external configs are not supported by Shoal; give file or content",
                )
            name = key
            if config.get("name") is not None:
                name = reader.string(config["name"], f"{where}.name")
            if not re.fullmatch(FILE_NAME_PATTERN, name):
                reader.fail(f"{where}.name", f"{name!r}: letters, digits, '_', '.' or '-'")
            sources[key] = FileSource(kind, key, name, "")
            continue
        if len(given) != 1:
            choices = "file, environment or content" if kind == "config" else "file or environment"
            reader.fail(where, f"give exactly one of {choices}")
        value = _value(reader, config, given[0], f"{where}.{given[0]}")
        if len(value) > MAX_VALUE:
            reader.fail(where, f"the value is {len(value)} bytes; at most {MAX_VALUE}")
        values[f"{kind}:{key}"] = value
        sources[key] = FileSource(kind, key, None, value_digest(kind, key, value))
    return sources


def _value(reader: Reader, config: dict[str, Any], source: str, where: str) -> bytes:
    if source == "content":
        return reader.string(config["content"], where).encode()
    if source == "environment":
        variable = reader.string(config["environment"], where)
        found = reader.lookup(variable)
        if found is None:
            reader.fail(where, f"variable {variable} is not set")
        return found.encode()
    path = Path(reader.string(config["file"], where)).expanduser()
    if not path.is_absolute():
        path = reader.base / path
    try:
        with path.open("rb") as f:
            data = f.read(MAX_VALUE + 1)
    except FileNotFoundError:
        reader.fail(where, f"{str(path)!r} not found")
    except OSError as exc:
        reader.fail(where, f"cannot read {str(path)!r}: {exc.strerror or exc}")
    return data


def read_mounts(
    reader: Reader, value: Any, where: str, kind: Kind, sources: dict[str, FileSource]
) -> list[FileMount]:
    """A service's ``secrets`` or ``configs``: names, or ``{source, target, uid, gid, mode}``."""
    if value is None:
        return []
    if not isinstance(value, list):
        reader.fail(where, "must be a list")
    mounts: list[FileMount] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        body: dict[str, Any]
        if isinstance(item, dict):
            body = reader.mapping(item, here)
            reader.check_keys(body, here, ("source", "target", "uid", "gid", "mode"))
        else:
            body = {"source": reader.string(item, here)}
        if body.get("source") is None:
            reader.fail(f"{here}.source", "required")
        key = reader.string(body["source"], f"{here}.source")
        source = sources.get(key)
        if source is None:
            reader.fail(here, f"{kind} {key!r} is not declared under the top-level {kind}s")
        target = _target(reader, kind, key, body.get("target"), f"{here}.target")
        values: dict[str, Any] = {
            "kind": kind,
            "name": source.external_name or key,
            "target": target,
            "external": source.external_name is not None,
            "digest": source.digest,
        }
        for owner in ("uid", "gid"):
            if body.get(owner) is not None:
                values[owner] = reader.string(body[owner], f"{here}.{owner}")
        if body.get("mode") is not None:
            values["mode"] = read_mode(reader, body["mode"], f"{here}.mode")
        mounts.append(reader.model(FileMount, here, **values))
    return mounts


def _target(reader: Reader, kind: Kind, key: str, raw: Any, where: str) -> str:
    if raw is None:
        return f"/run/secrets/{key}" if kind == "secret" else f"/{key}"
    target = reader.string(raw, where)
    if not target.startswith("/"):
        target = f"/run/secrets/{target}" if kind == "secret" else f"/{target}"
    if ".." in target.split("/"):
        reader.fail(where, f"{target!r} must not contain '..'")
    return posixpath.normpath(target)


def read_mode(reader: Reader, raw: Any, where: str, *, highest: int = 0o777) -> int:
    """An octal mode, as Docker Compose reads one: ``0440`` and ``0o440`` unquoted or a
    string like ``"0440"`` are octal; a plain number (``288``) is taken as it is."""
    if isinstance(raw, LeadingZeroInt):
        raw = raw.text
    if isinstance(raw, int) and not isinstance(raw, bool):
        mode = raw
    else:
        text = reader.string(raw, where).strip()
        try:
            mode = int(text.removeprefix("0o"), 8)
        except ValueError:
            reader.fail(where, f"{text!r} is not an octal mode like 0440")
    if not 0 <= mode <= highest:
        reader.fail(where, f"{oct(mode)} is not a file mode (0 to {oct(highest)})")
    return mode


__all__ = ["FileSource", "SecretValues", "read_files", "read_mode", "read_mounts"]

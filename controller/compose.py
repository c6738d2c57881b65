"""Compose files: read one into the ServiceSpecs that ``shoal deploy -f`` sends to hosts.

Shoal reads the part of the compose specification that maps onto one container of a
service per host. Everything else a file sets is an error naming the key, never
silently ignored; ``x-`` extension fields are ignored as the specification says, and
``version`` and ``name`` are ignored at the top level.

YAML is read with YAML 1.2 scalars (as Docker Compose does): ``no``, ``on`` and
``off`` are strings, ``22:22`` is a string, not a base-60 number, and a key given twice
in one mapping is an error. Variables are interpolated in every string value (never
in keys) as Compose does, from the given environment plus a ``.env`` file next to the
compose file (the environment wins).
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from shoal.protocol.errors import ErrorCode
from shoal.protocol.service import (
    SERVICE_NAME_PATTERN,
    FailureAction,
    HealthSpec,
    Order,
    PortSpec,
    RolloutConfig,
    ServiceSpec,
    VolumeSpec,
)

from .errors import FleetError

__all__ = ["ComposeError", "ComposeProject", "load_compose"]


class ComposeError(FleetError):
    """A compose file Shoal cannot read or deploy; the message names the file and key."""

    code = ErrorCode.BAD_REQUEST


@dataclass
class ComposeProject:
    """A compose file read for deploy: services in depends_on order, rollout defaults.

    ``update_config`` and ``rollback_config`` hold an entry only for services whose
    ``deploy`` sets one. ``warnings`` name variables that were not set and were
    replaced by an empty string (Compose warns about those too).
    """

    path: Path
    services: list[ServiceSpec]
    update_config: dict[str, RolloutConfig] = field(default_factory=dict)
    rollback_config: dict[str, RolloutConfig] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]


# --- YAML ---------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars, as Docker Compose reads files."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class registry)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, label: str) -> None:
    """Refuse a key given twice in one mapping (PyYAML would keep the last silently)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    if key_node.value in keys:
                        line = key_node.start_mark.line + 1
                        raise ComposeError(
                            f"{label}: line {line}: key {key_node.value!r} is given twice"
                        )
                    keys.add(key_node.value)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _load_yaml(text: str, label: str) -> Any:
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, label)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ComposeError(f"{label}: {where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{label}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()


# --- interpolation ------------------------------------------------------------------


class _TemplateError(ValueError):
    pass


_VAR_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")

Lookup = Callable[[str], str | None]


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _substitute(text: str, lookup: Lookup, on_unset: Callable[[str], None]) -> str:
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e},
    ${VAR:+a}, ${VAR+a}, and $$ for a literal $. Defaults nest (``${A:-${B}}``)."""
    if "$" not in text:
        return text

    def invalid() -> _TemplateError:
        return _TemplateError(f"invalid interpolation in {text!r} (write $$ for a literal $)")

    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing_brace(text, j + 2)
            if end < 0:
                raise invalid()
            out.append(_braced(text[j + 2 : end], lookup, on_unset, invalid))
            i = end + 1
        else:
            match = _VAR_NAME.match(text, j + 1)
            if match is None:
                raise invalid()
            value = lookup(match.group())
            if value is None:
                on_unset(match.group())
                value = ""
            out.append(value)
            i = match.end()
    return "".join(out)


def _braced(
    inner: str,
    lookup: Lookup,
    on_unset: Callable[[str], None],
    invalid: Callable[[], _TemplateError],
) -> str:
    match = _VAR_NAME.match(inner)
    if match is None:
        raise invalid()
    name, rest = match.group(), inner[match.end() :]
    value = lookup(name)
    if not rest:
        if value is None:
            on_unset(name)
            return ""
        return value
    colon = rest.startswith(":")
    if colon:
        rest = rest[1:]
    op, word = rest[:1], rest[1:]
    if op not in ("-", "+", "?"):
        raise invalid()
    present = value is not None and (value != "" or not colon)
    if op == "-":
        return value if present and value is not None else _substitute(word, lookup, on_unset)
    if op == "+":
        return _substitute(word, lookup, on_unset) if present else ""
    if present and value is not None:
        return value
    message = _substitute(word, lookup, on_unset)
    raise _TemplateError(
        f"required variable {name} is missing a value" + (f": {message}" if message else "")
    )


# --- dotenv files -------------------------------------------------------------------

_DOTENV_KEY = re.compile(r"[A-Za-z0-9_.\-\[\]]+")
_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def _parse_dotenv(text: str, lookup: Lookup, on_unset: Callable[[str], None]) -> dict[str, str]:
    """Parse a .env / env_file: ``KEY=VALUE`` lines as Compose reads them.

    Blank lines and ``#`` comments are skipped, ``export`` is allowed before a key,
    values may be 'single-quoted' (literal) or "double-quoted" (escapes, may span
    lines); an unquoted value ends at `` #``. Unquoted and double-quoted values are
    interpolated, looking up ``lookup`` first, then keys set earlier in the file. A
    bare ``KEY`` takes its value from ``lookup`` and is left out if that has none.
    Raises ValueError naming the line.
    """
    text = text.removeprefix("\ufeff")
    out: dict[str, str] = {}

    def resolve(name: str) -> str | None:
        found = lookup(name)
        return found if found is not None else out.get(name)

    lines = text.split("\n")
    n = 0
    while n < len(lines):
        lineno, line = n + 1, lines[n].lstrip()
        n += 1
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not _DOTENV_KEY.fullmatch(key):
            raise ValueError(f"line {lineno}: invalid variable name {key!r}")
        if not eq:
            found = lookup(key)
            if found is not None:
                out[key] = found
            continue
        rest = rest.lstrip(" \t")
        try:
            if rest[:1] == "'":
                body, after, n = _quoted(rest, "'", lines, n, lineno)
                value = body
            elif rest[:1] == '"':
                body, after, n = _quoted(rest, '"', lines, n, lineno)
                value = _substitute(_unescape(body), resolve, on_unset)
            else:
                value = re.split(r"[ \t]#", rest, maxsplit=1)[0].rstrip()
                after = ""
                value = _substitute(value, resolve, on_unset)
        except _TemplateError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        after = after.strip()
        if after and not after.startswith("#"):
            raise ValueError(f"line {lineno}: unexpected text after the quoted value of {key}")
        out[key] = value
    return out


def _quoted(rest: str, quote: str, lines: list[str], n: int, lineno: int) -> tuple[str, str, int]:
    """The body of a quoted value starting at ``rest`` (which may continue on later lines)."""
    text = rest[1:]
    while True:
        i = 0
        while i < len(text):
            if text[i] == "\\" and quote == '"':
                i += 2
                continue
            if text[i] == quote:
                return text[:i], text[i + 1 :], n
            i += 1
        if n >= len(lines):
            raise ValueError(f"line {lineno}: unterminated {quote}-quoted value")
        text += "\n" + lines[n]
        n += 1


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _DQ_ESCAPES.get(m[1], m[0]), body, flags=re.DOTALL)


# --- scalar conversions -------------------------------------------------------------

_TRUE = {"y", "yes", "true", "on"}
_FALSE = {"n", "no", "false", "off"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_BYTES = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?(i)?b?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_PORT_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_RESTART = ("no", "always", "on-failure", "unless-stopped")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _parse_duration(text: str) -> float | None:
    text = text.strip()
    if text == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    return total if pos == len(text) and pos > 0 else None


def _parse_bytes(text: str) -> int | None:
    match = _BYTES.fullmatch(text.strip())
    if match is None:
        return None
    return int(float(match[1]) * _BYTE_UNITS[(match[2] or "").lower()])


def _model_error(exc: ValidationError) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error, for a ComposeError."""
    first = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    return loc, str(first["msg"]).removeprefix("Value error, ")


# --- the reader ---------------------------------------------------------------------

_TOP_LEVEL_REFUSED = {
    "networks": "not supported by Shoal (services use network_mode)",
    "configs": "not supported by Shoal",
    "secrets": "not supported by Shoal",
    "include": "not supported by Shoal",
}
_SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "volumes",
        "restart",
        "labels",
        "healthcheck",
        "user",
        "working_dir",
        "network_mode",
        "mem_limit",
        "cpus",
        "privileged",
        "pid",
        "ipc",
        "devices",
        "cap_add",
        "cap_drop",
        "security_opt",
        "stop_signal",
        "stop_grace_period",
        "depends_on",
        "deploy",
    }
)
_SERVICE_REFUSED = {
    "build": "Shoal deploys images; build them and push to a registry",
    "container_name": "Shoal names the containers it runs; remove container_name",
    "scale": "Shoal runs one container of a service per host; target more hosts instead",
    "extends": "not supported by Shoal; YAML anchors and merge keys (<<) work",
    "profiles": "not supported by Shoal; name the services to deploy instead",
    "networks": "not supported by Shoal; use network_mode",
}
_DEPLOY_REFUSED = {
    "replicas": "Shoal runs one container of a service per host; target more hosts instead",
    "restart_policy": "not supported by Shoal; use the service's restart",
    "placement": "not supported by Shoal; choose hosts with Shoal's host targeting",
}
_ROLLOUT_KEYS = (
    "parallelism",
    "delay",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "order",
)


@dataclass
class _Parsed:
    spec: ServiceSpec
    update: RolloutConfig | None
    rollback: RolloutConfig | None


class _Reader:
    def __init__(self, path: Path, label: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.label = label
        self.base = path.absolute().parent
        self.env = env
        self.warnings: list[str] = []
        self.volumes: set[str] = set()

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
                return _substitute(value, self.lookup, self.unset)
            except _TemplateError as exc:
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
            self.fail(where, f"must be a mapping, not {_type_name(value)}")
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
            loc, message = _model_error(exc)
            self.fail(f"{where}{loc}" if cls is ServiceSpec else where, message)

    # -- scalars

    def string(self, value: Any, where: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.fail(where, f"must be a string, not {_type_name(value)}")

    def boolean(self, value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
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
            seconds = _parse_duration(value)
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
            result = _parse_bytes(value)
        if result is None:
            self.fail(
                where, f'must be a size like "512m", "1g" or a number of bytes, not {value!r}'
            )
        if result <= 0:
            self.fail(where, f"must be more than 0 bytes, not {value!r}")
        return result

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {_type_name(value)}")
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

    # -- the file

    def read(self) -> tuple[dict[str, _Parsed], list[str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.fail("", f"{self.label}: no such file")
        except (OSError, UnicodeDecodeError) as exc:
            self.fail("", f"{self.label}: cannot read: {exc}")
        doc = _load_yaml(text, self.label)
        if doc is None:
            self.fail("", f"{self.label}: the file is empty")
        top = self.mapping(doc, "(top level)", null_ok=False)
        allowed = {"services", "version", "name", "volumes"}
        for key in top:
            if key not in allowed and not key.startswith("x-"):
                self.fail(key, _TOP_LEVEL_REFUSED.get(key, "not supported by Shoal"))
        self.read_volumes(self.interpolate(top.get("volumes"), "volumes"))
        if top.get("services") is None:
            self.fail("services", "required")
        raw_services = self.mapping(top["services"], "services")
        if not raw_services:
            self.fail("services", "no services defined")
        parsed: dict[str, _Parsed] = {}
        for name, raw in raw_services.items():
            where = f"services.{name}"
            if not re.fullmatch(SERVICE_NAME_PATTERN, name):
                self.fail(
                    where,
                    f"service name {name!r} must be 1-63 lowercase letters, digits, '_', '.' or"
                    f" '-', starting with a letter or digit ({SERVICE_NAME_PATTERN})",
                )
            body = self.mapping(raw, where)
            self.check_keys(body, where, _SERVICE_KEYS, _SERVICE_REFUSED)
            body = {k: v for k, v in body.items() if not k.startswith("x-")}
            parsed[name] = self.service(name, self.interpolate(body, where))
        order = self.order(parsed)
        return parsed, order

    def read_volumes(self, raw: Any) -> None:
        volumes = self.mapping(raw, "volumes")
        for name, body in volumes.items():
            where = f"volumes.{name}"
            if not _VOLUME_NAME.fullmatch(name):
                self.fail(where, "a volume name is letters, digits, '_', '.' or '-'")
            config = self.mapping(body, where)
            self.check_keys(config, where, ("driver",))
            driver = config.get("driver")
            if driver is not None and driver != "local":
                self.fail(f"{where}.driver", f"{driver!r}: only the local driver is supported")
            self.volumes.add(name)

    # -- one service

    def service(self, name: str, body: dict[str, Any]) -> _Parsed:
        where = f"services.{name}"

        def at(key: str) -> str:
            return f"{where}.{key}"

        if body.get("image") is None:
            self.fail(at("image"), "required")
        spec: dict[str, Any] = {"name": name, "image": self.string(body["image"], at("image"))}
        spec["command"] = self.words(body.get("command"), at("command"))
        spec["entrypoint"] = self.words(body.get("entrypoint"), at("entrypoint"))
        environment = self.env_files(body.get("env_file"), at("env_file"))
        environment.update(self.environment(body.get("environment"), at("environment")))
        spec["environment"] = environment
        spec["ports"] = self.ports(body.get("ports"), at("ports"))
        spec["volumes"] = self.service_volumes(body.get("volumes"), at("volumes"))
        if body.get("restart") is not None:
            spec["restart"] = self.restart(body["restart"], at("restart"))
        spec["labels"] = self.labels(body.get("labels"), at("labels"))
        spec["healthcheck"] = self.healthcheck(body.get("healthcheck"), at("healthcheck"))
        for key in ("user", "stop_signal"):
            if body.get(key) is not None:
                spec[key] = self.string(body[key], at(key))
        for key in ("network_mode", "pid", "ipc"):
            if body.get(key) is not None:
                spec[key] = self.no_service_ref(self.string(body[key], at(key)), at(key))
        if body.get("working_dir") is not None:
            working_dir = self.string(body["working_dir"], at("working_dir"))
            if not working_dir.startswith("/"):
                self.fail(at("working_dir"), f"{working_dir!r} must be an absolute path")
            spec["working_dir"] = working_dir
        if body.get("mem_limit") is not None:
            spec["mem_limit"] = self.size(body["mem_limit"], at("mem_limit"))
        if body.get("cpus") is not None:
            spec["cpus"] = self.number(body["cpus"], at("cpus"))
        if body.get("privileged") is not None:
            spec["privileged"] = self.boolean(body["privileged"], at("privileged"))
        for key in ("cap_add", "cap_drop", "security_opt"):
            if body.get(key) is not None:
                spec[key] = self.strings(body[key], at(key))
        if body.get("devices") is not None:
            spec["devices"] = self.devices(body["devices"], at("devices"))
        if body.get("stop_grace_period") is not None:
            spec["stop_grace_period"] = self.duration(
                body["stop_grace_period"], at("stop_grace_period")
            )
        spec["depends_on"] = self.depends_on(body.get("depends_on"), at("depends_on"))
        update, rollback = self.deploy(body.get("deploy"), at("deploy"), spec)
        service: ServiceSpec = self.model(ServiceSpec, where, **spec)
        return _Parsed(service, update, rollback)

    def environment(self, value: Any, where: str) -> dict[str, str]:
        """``environment``: a list of ``KEY=VALUE`` / ``KEY``, or a mapping."""
        out: dict[str, str] = {}
        if value is None:
            return out
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.string(item, f"{where}[{i}]")
                key, eq, val = text.partition("=")
                if not key:
                    self.fail(f"{where}[{i}]", f"{text!r} has no variable name")
                if eq:
                    out[key] = val
                elif (found := self.lookup(key)) is not None:
                    out[key] = found
            return out
        for key, val in self.mapping(value, where).items():
            if not key or "=" in key:
                self.fail(where, f"invalid variable name {key!r}")
            if val is None:
                if (found := self.lookup(key)) is not None:
                    out[key] = found
            elif isinstance(val, bool):
                out[key] = "true" if val else "false"
            else:
                out[key] = self.string(val, f"{where}.{key}")
        return out

    def env_files(self, value: Any, where: str) -> dict[str, str]:
        """``env_file``: a path, or a list of paths / ``{path, required}``; in order."""
        if value is None:
            return {}
        entries = value if isinstance(value, list) else [value]
        out: dict[str, str] = {}
        for i, entry in enumerate(entries):
            here = f"{where}[{i}]" if isinstance(value, list) else where
            required = True
            if isinstance(entry, dict):
                self.check_keys(self.mapping(entry, here), here, ("path", "required"))
                if entry.get("path") is None:
                    self.fail(f"{here}.path", "required")
                if entry.get("required") is not None:
                    required = self.boolean(entry["required"], f"{here}.required")
                entry = entry["path"]
            name = self.string(entry, here)
            file = Path(name).expanduser()
            if not file.is_absolute():
                file = self.base / file
            try:
                text = file.read_text(encoding="utf-8")
            except FileNotFoundError:
                if required:
                    self.fail(here, f"env file {str(file)!r} not found")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(here, f"cannot read env file {str(file)!r}: {exc}")
            try:
                out.update(_parse_dotenv(text, self.lookup, self.unset))
            except ValueError as exc:
                self.fail(here, f"{file}: {exc}")
        return out

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

    def restart(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if text.startswith("on-failure:"):
            self.fail(where, f"{text!r}: a retry limit is not supported by Shoal; use on-failure")
        if text not in _RESTART:
            self.fail(where, f"{text!r} must be one of {', '.join(_RESTART)}")
        return text

    # -- ports

    def port_range(self, text: str, where: str, what: str) -> list[int]:
        match = _PORT_RANGE.fullmatch(text)
        if match is None:
            self.fail(where, f"invalid {what} {text!r}")
        low = int(match[1])
        high = int(match[2]) if match[2] else low
        if not 1 <= low <= high <= 65535:
            self.fail(where, f"invalid {what} {text!r} (ports are 1-65535)")
        return list(range(low, high + 1))

    def host_ip(self, text: str, where: str) -> str | None:
        text = text.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if not text:
            return None
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            self.fail(where, f"{text!r} is not an IP address")

    def protocol(self, text: str, where: str) -> str:
        proto = text.strip().lower()
        if proto not in ("tcp", "udp", "sctp"):
            self.fail(where, f"protocol {text!r} must be tcp, udp or sctp")
        return proto

    def ports(self, value: Any, where: str) -> tuple[PortSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {_type_name(value)}")
        out: list[PortSpec] = []
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if isinstance(item, dict):
                out.append(self.port_long(self.mapping(item, here), here))
            else:
                out.extend(self.port_short(self.string(item, here), here))
        return tuple(out)

    def port_short(self, text: str, where: str) -> list[PortSpec]:
        """``[[IP:][HOST[-HOST]]:]CONTAINER[-CONTAINER][/PROTOCOL]``."""
        rest, _, proto = text.strip().partition("/")
        protocol = self.protocol(proto, where) if proto else "tcp"
        parts = rest.split(":")
        ip_text, host_text = "", ""
        if len(parts) == 2:
            host_text = parts[0]
        elif len(parts) >= 3:
            ip_text, host_text = ":".join(parts[:-2]), parts[-2]
        container = self.port_range(parts[-1], where, "container port")
        host_ip = self.host_ip(ip_text, where)
        hosts: list[int | None] = [None] * len(container)
        if host_text:
            published = self.port_range(host_text, where, "host port")
            if len(published) != len(container):
                self.fail(
                    where,
                    f"{text!r}: the host and container port ranges must be the same size"
                    " (Shoal publishes one host port per container port)",
                )
            hosts = list(published)
        return [
            self.model(
                PortSpec,
                where,
                container_port=c,
                host_port=h,
                protocol=protocol,
                host_ip=host_ip,
            )
            for c, h in zip(container, hosts, strict=True)
        ]

    def port_long(self, body: dict[str, Any], where: str) -> PortSpec:
        self.check_keys(body, where, ("target", "published", "host_ip", "protocol", "mode"))
        if body.get("target") is None:
            self.fail(f"{where}.target", "required")
        target = self.integer(body["target"], f"{where}.target")
        host_port: int | None = None
        if body.get("published") not in (None, ""):
            text = self.string(body["published"], f"{where}.published")
            published = self.port_range(text, f"{where}.published", "published port")
            if len(published) != 1:
                self.fail(
                    f"{where}.published",
                    f"{text!r}: a range is not supported by Shoal; publish one port",
                )
            host_port = published[0]
        host_ip = None
        if body.get("host_ip") is not None:
            host_ip = self.host_ip(self.string(body["host_ip"], f"{where}.host_ip"), where)
        protocol = "tcp"
        if body.get("protocol") is not None:
            protocol = self.protocol(self.string(body["protocol"], f"{where}.protocol"), where)
        mode = body.get("mode")
        if mode is not None and mode not in ("host", "ingress"):
            self.fail(f"{where}.mode", f"{mode!r} must be host or ingress")
        port: PortSpec = self.model(
            PortSpec,
            where,
            container_port=target,
            host_port=host_port,
            protocol=protocol,
            host_ip=host_ip,
        )
        return port

    # -- volumes

    def bind_source(self, source: str, where: str) -> str:
        if source.startswith("~"):
            try:
                source = str(Path(source).expanduser())
            except RuntimeError:
                self.fail(where, f"cannot expand {source!r}: no home directory")
        if not source.startswith("/"):
            source = str(self.base / source)
        return posixpath.normpath(source)

    def named_volume(self, source: str, where: str) -> str:
        if source not in self.volumes:
            self.fail(
                where,
                f"named volume {source!r} is not declared under the top-level volumes"
                " (a bind mount's source starts with '/', '.' or '~')",
            )
        return source

    def service_volumes(self, value: Any, where: str) -> tuple[VolumeSpec, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {_type_name(value)}")
        out: list[VolumeSpec] = []
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if isinstance(item, dict):
                out.append(self.volume_long(self.mapping(item, here), here))
            else:
                out.append(self.volume_short(self.string(item, here), here))
        return tuple(out)

    def volume_short(self, text: str, where: str) -> VolumeSpec:
        """``SOURCE:TARGET[:MODE]``; a bare ``TARGET`` (anonymous volume) is refused."""
        parts = text.split(":")
        if len(parts) == 1:
            self.fail(
                where,
                f"{text!r}: anonymous volumes are not supported by Shoal; name the volume"
                " (NAME:/path) and declare it under the top-level volumes",
            )
        if len(parts) > 3:
            self.fail(where, f"{text!r} must be SOURCE:TARGET[:MODE]")
        source, target = parts[0], parts[1]
        read_only = False
        if len(parts) == 3:
            for option in parts[2].split(","):
                if option in ("ro", "rw"):
                    read_only = option == "ro"
                elif option not in ("consistent", "cached", "delegated"):
                    self.fail(where, f"{text!r}: volume option {option!r} is not supported")
        if not source:
            self.fail(where, f"{text!r} has an empty source")
        if not target.startswith("/"):
            self.fail(where, f"{text!r}: the target {target!r} must be an absolute path")
        if source.startswith((".", "/", "~")):
            kind, source = "bind", self.bind_source(source, where)
        else:
            kind, source = "volume", self.named_volume(source, where)
        volume: VolumeSpec = self.model(
            VolumeSpec, where, type=kind, source=source, target=target, read_only=read_only
        )
        return volume

    def volume_long(self, body: dict[str, Any], where: str) -> VolumeSpec:
        self.check_keys(body, where, ("type", "source", "target", "read_only", "consistency"))
        kind = body.get("type")
        if kind is None:
            self.fail(f"{where}.type", "required (volume or bind)")
        if kind not in ("volume", "bind"):
            self.fail(f"{where}.type", f"{kind!r} is not supported by Shoal; use volume or bind")
        if body.get("target") is None:
            self.fail(f"{where}.target", "required")
        target = self.string(body["target"], f"{where}.target")
        if not target.startswith("/"):
            self.fail(f"{where}.target", f"{target!r} must be an absolute path")
        source = self.string(body.get("source") or "", f"{where}.source")
        if not source:
            if kind == "volume":
                self.fail(
                    f"{where}.source",
                    "anonymous volumes are not supported by Shoal; name the volume"
                    " and declare it under the top-level volumes",
                )
            self.fail(f"{where}.source", "required")
        if kind == "bind":
            source = self.bind_source(source, f"{where}.source")
        else:
            source = self.named_volume(source, f"{where}.source")
        read_only = False
        if body.get("read_only") is not None:
            read_only = self.boolean(body["read_only"], f"{where}.read_only")
        volume: VolumeSpec = self.model(
            VolumeSpec, where, type=kind, source=source, target=target, read_only=read_only
        )
        return volume

    # -- the rest

    def devices(self, value: Any, where: str) -> tuple[str, ...]:
        """Short ``HOST[:CONTAINER[:PERMISSIONS]]`` or long ``{source, target, permissions}``."""
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {_type_name(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if isinstance(item, dict):
                body = self.mapping(item, here)
                self.check_keys(body, here, ("source", "target", "permissions"))
                if body.get("source") is None:
                    self.fail(f"{here}.source", "required")
                parts = [self.string(body["source"], f"{here}.source")]
                target = body.get("target")
                parts.append(parts[0] if target is None else self.string(target, f"{here}.target"))
                if body.get("permissions") is not None:
                    parts.append(self.string(body["permissions"], f"{here}.permissions"))
                out.append(":".join(parts))
            else:
                text = self.string(item, here)
                if not text:
                    self.fail(here, "must not be empty")
                out.append(text)
        return tuple(out)

    def healthcheck(self, value: Any, where: str) -> HealthSpec | None:
        if value is None:
            return None
        body = self.mapping(value, where)
        self.check_keys(
            body, where, ("test", "interval", "timeout", "retries", "start_period", "disable")
        )
        disabled = body.get("disable") is not None and self.boolean(
            body["disable"], f"{where}.disable"
        )
        test_value = body.get("test")
        if disabled:
            if test_value is not None:
                self.fail(where, "disable: true and test cannot be set together")
            return None
        if test_value is None:
            self.fail(
                f"{where}.test",
                "required (Shoal does not adjust an image's own healthcheck)",
            )
        test: tuple[str, ...]
        if isinstance(test_value, str):
            if not test_value.strip():
                self.fail(f"{where}.test", "must not be empty")
            test = ("CMD-SHELL", test_value)
        else:
            test = self.strings(test_value, f"{where}.test")
            if not test:
                self.fail(f"{where}.test", "must not be empty")
            if test[0] == "NONE":
                if len(test) > 1:
                    self.fail(f"{where}.test", '["NONE"] takes no arguments')
                return None
            if test[0] == "CMD-SHELL" and len(test) != 2:
                self.fail(f"{where}.test", 'CMD-SHELL takes one string: ["CMD-SHELL", "cmd"]')
            if test[0] == "CMD" and len(test) < 2:
                self.fail(f"{where}.test", 'CMD needs a command: ["CMD", "prog", "arg"]')
            if test[0] not in ("CMD", "CMD-SHELL"):
                self.fail(
                    f"{where}.test",
                    f"a list starts with CMD, CMD-SHELL or NONE, not {test[0]!r}",
                )
        values: dict[str, Any] = {"test": test}
        for key in ("interval", "timeout", "start_period"):
            if body.get(key) is not None:
                values[key] = self.duration(body[key], f"{where}.{key}")
        if body.get("retries") is not None:
            values["retries"] = self.integer(body["retries"], f"{where}.retries")
        try:
            return HealthSpec(**values)
        except ValidationError as exc:
            loc, message = _model_error(exc)
            self.fail(f"{where}{loc}", message)

    def depends_on(self, value: Any, where: str) -> tuple[str, ...]:
        """A list of service names, or a mapping of names to ``{condition, required,
        restart}``. Shoal uses it for order only; a dependency it would have to wait
        on differently from ordering is refused."""
        if value is None:
            return ()
        names: list[str] = []
        if isinstance(value, list):
            names = [self.string(item, f"{where}[{i}]") for i, item in enumerate(value)]
        else:
            for name, options in self.mapping(value, where).items():
                here = f"{where}.{name}"
                body = self.mapping(options, here)
                self.check_keys(body, here, ("condition", "required", "restart"))
                condition = body.get("condition", "service_started")
                if condition not in ("service_started", "service_healthy"):
                    self.fail(
                        f"{here}.condition",
                        f"{condition!r}: Shoal orders services that keep running;"
                        " service_started or service_healthy",
                    )
                if body.get("required") is not None:
                    self.boolean(body["required"], f"{here}.required")
                if body.get("restart") is not None and self.boolean(
                    body["restart"], f"{here}.restart"
                ):
                    self.fail(f"{here}.restart", "restarting dependents is not supported by Shoal")
                names.append(name)
        return tuple(dict.fromkeys(names))

    def rollout(self, value: Any, where: str, *, rollback: bool) -> RolloutConfig:
        body = self.mapping(value, where)
        self.check_keys(body, where, _ROLLOUT_KEYS)
        values: dict[str, Any] = {}
        if body.get("parallelism") is not None:
            values["parallelism"] = self.parallelism(body["parallelism"], f"{where}.parallelism")
        for key in ("delay", "monitor"):
            if body.get(key) is not None:
                values[key] = self.duration(body[key], f"{where}.{key}")
        if body.get("failure_action") is not None:
            action = self.string(body["failure_action"], f"{where}.failure_action")
            allowed = [a.value for a in FailureAction]
            if rollback:
                allowed.remove(FailureAction.ROLLBACK.value)
            if action not in allowed:
                self.fail(f"{where}.failure_action", f"{action!r} must be {' or '.join(allowed)}")
            values["failure_action"] = FailureAction(action)
        if body.get("order") is not None:
            order = self.string(body["order"], f"{where}.order")
            if order not in [o.value for o in Order]:
                self.fail(f"{where}.order", f"{order!r} must be stop-first or start-first")
            values["order"] = Order(order)
        if body.get("max_failure_ratio") is not None:
            ratio = self.number(body["max_failure_ratio"], f"{where}.max_failure_ratio")
            if not 0 <= ratio <= 1:
                self.fail(f"{where}.max_failure_ratio", f"{ratio} must be between 0 and 1")
            values["max_failure_ratio"] = ratio
        config: RolloutConfig = self.model(RolloutConfig, where, **values)
        return config

    def parallelism(self, value: Any, where: str) -> str:
        """An integer (0 means all at once) or ``N%``."""
        if isinstance(value, str) and value.strip().endswith("%"):
            digits = value.strip()[:-1].strip()
            if not digits.isdigit() or not 1 <= int(digits) <= 100:
                self.fail(where, f"{value!r} must be a percentage from 1% to 100%")
            return f"{int(digits)}%"
        count = self.integer(value, where)
        if count < 0:
            self.fail(where, f"{count} must not be negative")
        return "100%" if count == 0 else str(count)

    def deploy(
        self, value: Any, where: str, spec: dict[str, Any]
    ) -> tuple[RolloutConfig | None, RolloutConfig | None]:
        if value is None:
            return None, None
        body = self.mapping(value, where)
        self.check_keys(
            body, where, ("update_config", "rollback_config", "resources", "mode"), _DEPLOY_REFUSED
        )
        mode = body.get("mode")
        if mode is not None and mode != "global":
            self.fail(
                f"{where}.mode",
                f"{mode!r}: Shoal runs one container of a service per host (mode: global)",
            )
        update = rollback = None
        if body.get("update_config") is not None:
            update = self.rollout(body["update_config"], f"{where}.update_config", rollback=False)
        if body.get("rollback_config") is not None:
            rollback = self.rollout(
                body["rollback_config"], f"{where}.rollback_config", rollback=True
            )
        resources = self.mapping(body.get("resources"), f"{where}.resources")
        self.check_keys(resources, f"{where}.resources", ("limits",))
        here = f"{where}.resources.limits"
        limits = self.mapping(resources.get("limits"), here)
        self.check_keys(limits, here, ("memory", "cpus"))
        for key, field_name, convert in (
            ("memory", "mem_limit", self.size),
            ("cpus", "cpus", self.number),
        ):
            if limits.get(key) is None:
                continue
            limit = convert(limits[key], f"{here}.{key}")
            current = spec.get(field_name)
            if current is not None and current != limit:
                self.fail(
                    f"{here}.{key}",
                    f"{limits[key]!r} differs from the service's {field_name}; set one of them",
                )
            spec[field_name] = limit
        return update, rollback

    # -- order

    def order(self, parsed: Mapping[str, _Parsed]) -> list[str]:
        """Dependencies first; otherwise the file's order. A cycle is an error."""
        index = {name: i for i, name in enumerate(parsed)}
        for name, item in parsed.items():
            for dep in item.spec.depends_on:
                if dep not in parsed:
                    self.fail(
                        f"services.{name}.depends_on",
                        f"unknown service {dep!r} (services: {', '.join(parsed)})",
                    )
        waiting = {name: len(item.spec.depends_on) for name, item in parsed.items()}
        dependents: dict[str, list[str]] = {name: [] for name in parsed}
        for name, item in parsed.items():
            for dep in item.spec.depends_on:
                dependents[dep].append(name)
        ready = [(index[n], n) for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for dependent in dependents[name]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, (index[dependent], dependent))
        if len(order) < len(parsed):
            self.fail("services", f"depends_on cycle: {' -> '.join(self.cycle(parsed, order))}")
        return order

    @staticmethod
    def cycle(parsed: Mapping[str, _Parsed], done: list[str]) -> list[str]:
        """One cycle among the services ``order`` could not place."""
        left = [n for n in parsed if n not in set(done)]
        path = [left[0]]
        while True:
            nxt = next(d for d in parsed[path[-1]].spec.depends_on if d not in set(done))
            if nxt in path:
                return [*path[path.index(nxt) :], nxt]
            path.append(nxt)


def _dotenv_environment(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus the ``.env`` next to the compose file (``environ`` wins)."""
    env_path = path.absolute().parent / ".env"
    if not env_path.is_file():
        return dict(environ)
    try:
        text = env_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ComposeError(f"{env_path}: cannot read: {exc}") from None
    unset: list[str] = []
    try:
        values = _parse_dotenv(text, environ.get, unset.append)
    except ValueError as exc:
        raise ComposeError(f"{env_path}: {exc}") from None
    return {**values, **environ}


def load_compose(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
) -> ComposeProject:
    """Read a compose file into ServiceSpecs, in depends_on order.

    ``environ`` (default ``os.environ``) and a ``.env`` file next to the compose file
    supply the variables. ``services`` names the services to include (all when empty);
    a named service's dependencies that are not named are left out, and the named
    ones keep their depends_on order. Raises ComposeError naming the file and key.
    """
    path = Path(path)
    env = _dotenv_environment(path, os.environ if environ is None else environ)
    reader = _Reader(path, str(path), env)
    parsed, order = reader.read()
    if services:
        wanted = list(dict.fromkeys(services))
        unknown = [name for name in wanted if name not in parsed]
        if unknown:
            raise ComposeError(
                f"{path}: no such service: {', '.join(unknown)}"
                f" (services in the file: {', '.join(parsed)})"
            )
        order = [name for name in order if name in set(wanted)]
    return ComposeProject(
        path=path,
        services=[parsed[name].spec for name in order],
        update_config={n: u for n in order if (u := parsed[n].update) is not None},
        rollback_config={n: r for n in order if (r := parsed[n].rollback) is not None},
        warnings=reader.warnings,
    )

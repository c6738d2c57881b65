"""Reading the services of a compose file into ServiceSpecs and rollout defaults.

Every key a service may set is in the tables below; a key outside them is an error
naming it, and ``x-`` keys are ignored.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

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

from .dotenv import parse_dotenv
from .interpolation import TemplateError, substitute
from .ordering import order_services
from .project import ComposeError
from .values import (
    FALSE_WORDS,
    PORT_RANGE,
    RESTART_POLICIES,
    TRUE_WORDS,
    VOLUME_NAME,
    model_error,
    parse_bytes,
    parse_duration,
    type_name,
)
from .yamlfile import load_yaml

_TOP_LEVEL_REFUSED = {
    "networks": "not supported by Shoal (services use network_mode)",
    "configs": "not supported by Shoal",
    "secrets": "not supported by Shoal",
    "include": "not supported by Shoal",
}
# Keys read by one reader each into the ServiceSpec field of the same name, when set:
# adding such a key is one line here (and the field in shoal.protocol.service).
_OPTIONAL_KEYS: dict[str, str] = {
    "restart": "restart",
    "user": "string",
    "stop_signal": "string",
    "network_mode": "mode",
    "pid": "mode",
    "ipc": "mode",
    "working_dir": "absolute_path",
    "mem_limit": "size",
    "cpus": "number",
    "privileged": "boolean",
    "cap_add": "strings",
    "cap_drop": "strings",
    "security_opt": "strings",
    "devices": "devices",
    "stop_grace_period": "duration",
}
# Keys with readers of their own in ServiceReader.service().
_SERVICE_KEYS = frozenset(
    {
        "image",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "volumes",
        "labels",
        "healthcheck",
        "depends_on",
        "deploy",
        *_OPTIONAL_KEYS,
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
class ParsedService:
    spec: ServiceSpec
    update: RolloutConfig | None
    rollback: RolloutConfig | None


class ServiceReader:
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

    # -- the file

    def read(self) -> tuple[dict[str, ParsedService], list[str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.fail("", f"{self.label}: no such file")
        except (OSError, UnicodeDecodeError) as exc:
            self.fail("", f"{self.label}: cannot read: {exc}")
        doc = load_yaml(text, self.label)
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
        parsed: dict[str, ParsedService] = {}
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
        order = order_services({n: p.spec.depends_on for n, p in parsed.items()}, self.fail)
        return parsed, order

    def read_volumes(self, raw: Any) -> None:
        volumes = self.mapping(raw, "volumes")
        for name, body in volumes.items():
            where = f"volumes.{name}"
            if not VOLUME_NAME.fullmatch(name):
                self.fail(where, "a volume name is letters, digits, '_', '.' or '-'")
            config = self.mapping(body, where)
            self.check_keys(config, where, ("driver",))
            driver = config.get("driver")
            if driver is not None and driver != "local":
                self.fail(f"{where}.driver", f"{driver!r}: only the local driver is supported")
            self.volumes.add(name)

    # -- one service

    def service(self, name: str, body: dict[str, Any]) -> ParsedService:
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
        spec["labels"] = self.labels(body.get("labels"), at("labels"))
        spec["healthcheck"] = self.healthcheck(body.get("healthcheck"), at("healthcheck"))
        for key, reader in _OPTIONAL_KEYS.items():
            if body.get(key) is not None:
                spec[key] = getattr(self, reader)(body[key], at(key))
        spec["depends_on"] = self.depends_on(body.get("depends_on"), at("depends_on"))
        update, rollback = self.deploy(body.get("deploy"), at("deploy"), spec)
        service: ServiceSpec = self.model(ServiceSpec, where, **spec)
        return ParsedService(service, update, rollback)

    def mode(self, value: Any, where: str) -> str:
        """``network_mode``, ``pid``, ``ipc``: a mode string, never ``service:NAME``."""
        return self.no_service_ref(self.string(value, where), where)

    def absolute_path(self, value: Any, where: str) -> str:
        path = self.string(value, where)
        if not path.startswith("/"):
            self.fail(where, f"{path!r} must be an absolute path")
        return path

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
                out.update(parse_dotenv(text, self.lookup, self.unset))
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
        if text not in RESTART_POLICIES:
            self.fail(where, f"{text!r} must be one of {', '.join(RESTART_POLICIES)}")
        return text

    # -- ports

    def port_range(self, text: str, where: str, what: str) -> list[int]:
        match = PORT_RANGE.fullmatch(text)
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
            self.fail(where, f"must be a list, not {type_name(value)}")
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
            self.fail(where, f"must be a list, not {type_name(value)}")
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
            self.fail(where, f"must be a list, not {type_name(value)}")
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
            loc, message = model_error(exc)
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

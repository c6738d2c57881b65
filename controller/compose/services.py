"""Reading the services of a compose file into ServiceSpecs and rollout defaults.

Every key a service may set is in the tables below; a key outside them is an error
naming it, and ``x-`` keys are ignored.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shoal.protocol.service import (
    CONTAINER_NAME_PATTERN,
    PLATFORM_PATTERN,
    SERVICE_NAME_PATTERN,
    FailureAction,
    HealthSpec,
    LoggingSpec,
    NetworkSpec,
    Order,
    PortSpec,
    RolloutConfig,
    ServiceSpec,
    Ulimit,
    VolumeSpec,
)

from .dotenv import parse_dotenv
from .files import FileSource, read_files, read_mode, read_mounts
from .networks import DEFAULT, project_name, read_attachments, read_networks
from .ordering import order_services
from .reader import Reader
from .values import (
    PORT_RANGE,
    RESTART_POLICIES,
    VOLUME_NAME,
    model_error,
    type_name,
)
from .yamlfile import load_yaml

_TOP_LEVEL_KEYS = frozenset(
    {"services", "version", "name", "volumes", "networks", "secrets", "configs"}
)
_TOP_LEVEL_REFUSED = {
    "include": "not supported by Shoal; merge the files into one",
}
# Keys read by one reader each into the ServiceSpec field of the same name, when set:
# adding such a key is one line here (and the field in shoal.protocol.service).
_OPTIONAL_KEYS: dict[str, str] = {
    "user": "string",
    "stop_signal": "string",
    "network_mode": "mode",
    "pid": "mode",
    "ipc": "mode",
    "working_dir": "absolute_path",
    "mem_limit": "size",
    "mem_reservation": "size",
    "memswap_limit": "swap_size",
    "shm_size": "size",
    "cpus": "number",
    "cpu_shares": "integer",
    "cpuset": "string",
    "pids_limit": "integer",
    "oom_score_adj": "integer",
    "privileged": "boolean",
    "init": "boolean",
    "read_only": "boolean",
    "tty": "boolean",
    "stdin_open": "boolean",
    "cap_add": "strings",
    "cap_drop": "strings",
    "security_opt": "strings",
    "group_add": "strings",
    "devices": "devices",
    "stop_grace_period": "duration",
    "expose": "expose",
    "container_name": "container_name",
    "platform": "platform",
    "pull_policy": "pull_policy",
    "extra_hosts": "extra_hosts",
    "dns": "strings_or_string",
    "dns_search": "strings_or_string",
    "dns_opt": "strings",
    "tmpfs": "strings_or_string",
    "ulimits": "ulimits",
    "sysctls": "string_map",
    "hostname": "string",
    "domainname": "string",
    "mac_address": "string",
    "logging": "logging",
}
# Keys with readers of their own in ServiceReader.service().
_SERVICE_KEYS = frozenset(
    {
        "image",
        "build",
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
        "restart",
        "networks",
        "secrets",
        "configs",
        "profiles",
        *_OPTIONAL_KEYS,
    }
)
_SERVICE_REFUSED = {
    "scale": "Shoal runs one container of a service per host; target more hosts instead",
    "extends": "not supported by Shoal; YAML anchors and merge keys (<<) work",
    "links": "not supported by Shoal; services on one network reach each other by name",
    "external_links": "not supported by Shoal; attach the service to an external network",
    "volumes_from": "not supported by Shoal; mount the same named volume instead",
    "cgroup_parent": "not supported by Shoal",
    "userns_mode": "not supported by Shoal",
    "runtime": "not supported by Shoal",
}
_DEPLOY_REFUSED = {
    "endpoint_mode": "Swarm's service endpoints; not supported by Shoal",
}
_ROLLOUT_KEYS = (
    "parallelism",
    "delay",
    "failure_action",
    "monitor",
    "max_failure_ratio",
    "order",
)
_PULL_POLICIES = {
    "always": "always",
    "missing": "missing",
    "if_not_present": "missing",
    "never": "never",
}
_RESTART_CONDITIONS = {"none": "no", "on-failure": "on-failure", "any": "always"}
_DEPENDENCY_CONDITIONS = (
    "service_started",
    "service_healthy",
    "service_completed_successfully",
)


@dataclass
class ParsedService:
    spec: ServiceSpec
    update: RolloutConfig | None
    rollback: RolloutConfig | None
    completes_for: list[str] = field(default_factory=list)
    """Services that wait for this one to exit 0 (service_completed_successfully)."""


class ServiceReader(Reader):
    """Reads a compose file's services."""

    def __init__(
        self,
        path: Path,
        label: str,
        env: Mapping[str, str],
        *,
        project: str | None = None,
        profiles: Collection[str] = (),
        wanted: Collection[str] = (),
    ) -> None:
        super().__init__(path, label, env)
        self.project = project
        self.profiles = set(profiles)
        self.wanted = set(wanted)
        self.networks: dict[str, NetworkSpec] = {}
        self.sources: dict[str, dict[str, FileSource]] = {"secret": {}, "config": {}}
        self.values: dict[str, bytes] = {}
        self.conditions: dict[str, dict[str, str]] = {}
        self.volume_extras: dict[str, dict[str, Any]] = {}
        """Per engine volume name: ``driver_opts`` and ``labels`` to create it with."""

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
        for key in top:
            if key not in _TOP_LEVEL_KEYS and not key.startswith("x-"):
                self.fail(key, _TOP_LEVEL_REFUSED.get(key, "not supported by Shoal"))
        self.project = self.read_project(top.get("name"))
        self.read_volumes(self.interpolate(top.get("volumes"), "volumes"))
        self.networks = read_networks(
            self, self.interpolate(top.get("networks"), "networks"), self.project
        )
        for kind in ("secret", "config"):
            section = f"{kind}s"
            self.sources[kind] = read_files(
                self, self.interpolate(top.get(section), section), kind, self.values
            )
        if top.get("services") is None:
            self.fail("services", "required")
        raw_services = self.mapping(top["services"], "services")
        if not raw_services:
            self.fail("services", "no services defined")
        parsed: dict[str, ParsedService] = {}
        disabled: set[str] = set()
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
            body = self.interpolate(body, where)
            if not self.enabled(name, body.get("profiles"), f"{where}.profiles"):
                disabled.add(name)
                continue
            parsed[name] = self.service(name, body)
        if not parsed:
            active = ", ".join(sorted(self.profiles)) or "none"
            self.fail("services", f"every service is in a profile that is not active ({active})")
        self.drop_disabled_dependencies(parsed, disabled)
        for name, conditions in self.conditions.items():
            for dependency, condition in conditions.items():
                if condition == "service_completed_successfully" and dependency in parsed:
                    parsed[dependency].completes_for.append(name)
        order = order_services({n: p.spec.depends_on for n, p in parsed.items()}, self.fail)
        return parsed, order

    def read_project(self, raw: Any) -> str:
        """``-p`` first, then the file's ``name:``, then its folder's name (as Compose).

        A name given outright must be a valid one; the file's ``name:`` and the folder's
        name are normalised (lowercased, other characters dropped), as Compose does.
        """
        if self.project:
            if project_name(self.project) != self.project:
                self.fail(
                    "",
                    f"{self.label}: invalid project name {self.project!r}: lowercase"
                    " letters, digits, '-' and '_', starting with a letter or digit",
                )
            return self.project
        given = ""
        if raw is not None:
            given = self.string(self.interpolate(raw, "name"), "name")
        if given:
            name = project_name(given)
            if not name:
                self.fail("name", f"{given!r} is not a usable project name")
            return name
        name = project_name(self.base.name)
        if not name:
            self.fail(
                "",
                f"{self.label}: the folder's name {self.base.name!r} is not a usable project"
                " name (lowercase letters, digits, '-', '_'); set name: in the file or give"
                " a project name",
            )
        return name

    def enabled(self, name: str, raw: Any, where: str) -> bool:
        """A service without profiles is on; one with profiles when one is active or it is named."""
        if raw is None:
            return True
        profiles = self.strings(raw, where)
        if not profiles:
            return True  # profiles: [] is no profile, as in Compose
        return name in self.wanted or bool(self.profiles & set(profiles)) or "*" in self.profiles

    def drop_disabled_dependencies(
        self, parsed: dict[str, ParsedService], disabled: set[str]
    ) -> None:
        for name, service in list(parsed.items()):
            missing = [d for d in service.spec.depends_on if d in disabled]
            if not missing:
                continue
            self.warnings.append(
                f"service {name}: depends_on {', '.join(missing)}, which is not in an"
                " active profile; deploying without it"
            )
            kept = tuple(d for d in service.spec.depends_on if d not in disabled)
            spec = service.spec.model_copy(update={"depends_on": kept})
            parsed[name] = ParsedService(spec, service.update, service.rollback)

    def read_volumes(self, raw: Any) -> None:
        volumes = self.mapping(raw, "volumes")
        for name, body in volumes.items():
            where = f"volumes.{name}"
            if not VOLUME_NAME.fullmatch(name):
                self.fail(where, "a volume name is letters, digits, '_', '.' or '-'")
            config = self.mapping(body, where)
            self.check_keys(config, where, ("driver", "name", "external", "driver_opts", "labels"))
            driver = config.get("driver")
            if driver is not None and driver != "local":
                self.fail(f"{where}.driver", f"{driver!r}: only the local driver is supported")
            engine_name = name
            if config.get("name") is not None:
                engine_name = self.string(config["name"], f"{where}.name")
                if not VOLUME_NAME.fullmatch(engine_name):
                    self.fail(f"{where}.name", f"{engine_name!r}: letters, digits, '_', '.', '-'")
            external = config.get("external") is not None and self.boolean(
                config["external"], f"{where}.external"
            )
            extras: dict[str, Any] = {}
            for key, field_name in (("driver_opts", "driver_opts"), ("labels", "volume_labels")):
                if config.get(key) is not None:
                    if external:
                        self.fail(
                            f"{where}.{key}", "an external volume is defined outside the file"
                        )
                    extras[field_name] = self.string_map(config[key], f"{where}.{key}")
            self.volumes[name] = engine_name
            self.volume_extras[engine_name] = extras

    # -- one service

    def service(self, name: str, body: dict[str, Any]) -> ParsedService:
        where = f"services.{name}"

        def at(key: str) -> str:
            return f"{where}.{key}"

        if body.get("image") is None:
            if body.get("build") is not None:
                self.fail(
                    at("build"),
                    "Shoal deploys images and does not build them: build and push the image,"
                    f" then add image: to service {name}",
                )
            self.fail(at("image"), "required")
        if body.get("build") is not None:
            self.warnings.append(
                f"service {name}: the build section is ignored; deploying image {body['image']}"
            )
        spec: dict[str, Any] = {"name": name, "image": self.string(body["image"], at("image"))}
        spec["command"] = self.words(body.get("command"), at("command"))
        spec["entrypoint"] = self.words(body.get("entrypoint"), at("entrypoint"))
        environment = self.env_files(body.get("env_file"), at("env_file"))
        environment.update(self.environment(body.get("environment"), at("environment")))
        spec["environment"] = environment
        spec["ports"] = self.ports(body.get("ports"), at("ports"))
        spec["volumes"], tmpfs = self.service_volumes(body.get("volumes"), at("volumes"))
        spec["labels"] = self.labels(body.get("labels"), at("labels"))
        spec["healthcheck"] = self.healthcheck(body.get("healthcheck"), at("healthcheck"))
        if body.get("restart") is not None:
            spec["restart"], attempts = self.restart(body["restart"], at("restart"))
            if attempts is not None:
                spec["restart_max_attempts"] = attempts
        for key, reader in _OPTIONAL_KEYS.items():
            if body.get(key) is not None:
                spec[key] = getattr(self, reader)(body[key], at(key))
        if tmpfs:
            spec["tmpfs"] = (*spec.get("tmpfs", ()), *tmpfs)
        spec["depends_on"] = self.depends_on(name, body.get("depends_on"), at("depends_on"))
        spec["networks"] = self.service_networks(name, body, spec, at("networks"))
        spec["secrets"] = tuple(
            mount
            for kind in ("secret", "config")
            for mount in read_mounts(
                self, body.get(f"{kind}s"), at(f"{kind}s"), kind, self.sources[kind]
            )
        )
        update, rollback = self.deploy(body.get("deploy"), at("deploy"), spec)
        service: ServiceSpec = self.model(ServiceSpec, where, **spec)
        return ParsedService(service, update, rollback)

    def service_networks(
        self, name: str, body: dict[str, Any], spec: dict[str, Any], where: str
    ) -> tuple[Any, ...]:
        """The service's networks; the project's default one when it names none (as Compose)."""
        if spec.get("network_mode") is not None:
            if body.get("networks") is not None:
                self.fail(where, "network_mode and networks cannot be set together")
            return ()
        if body.get("networks") is None:
            return read_attachments(self, [DEFAULT], where, self.networks)
        return read_attachments(self, body["networks"], where, self.networks)

    def container_name(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not re.fullmatch(CONTAINER_NAME_PATTERN, text):
            self.fail(where, f"{text!r}: a container name is letters, digits, '_', '.' or '-'")
        return text

    def platform(self, value: Any, where: str) -> str:
        text = self.string(value, where).strip().lower()
        if not re.fullmatch(PLATFORM_PATTERN, text):
            self.fail(where, f"{text!r} must be OS/ARCH[/VARIANT], like linux/arm64")
        return text

    def pull_policy(self, value: Any, where: str) -> str:
        text = self.string(value, where).strip().lower()
        if text == "build":
            self.fail(where, "'build': Shoal deploys images and does not build them")
        if text not in _PULL_POLICIES:
            self.fail(where, f"{text!r} must be always, missing or never")
        return _PULL_POLICIES[text]

    def swap_size(self, value: Any, where: str) -> int:
        """``memswap_limit``: a size, or -1 for unlimited swap."""
        if value in (-1, "-1"):
            return -1
        return self.size(value, where)

    def expose(self, value: Any, where: str) -> tuple[str, ...]:
        """``expose``: ports or ranges, ``80``, ``8000-8010/udp``, as ``PORT/PROTOCOL``."""
        out: list[str] = []
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            here = f"{where}[{i}]"
            text = self.string(item, here)
            port, _, proto = text.partition("/")
            protocol = self.protocol(proto, here) if proto else "tcp"
            out.extend(f"{p}/{protocol}" for p in self.port_range(port, here, "port"))
        return tuple(dict.fromkeys(out))

    def extra_hosts(self, value: Any, where: str) -> tuple[str, ...]:
        """``extra_hosts``: ``name:address`` / ``name=address`` entries, or a mapping."""
        pairs: list[tuple[str, Any, str]] = []
        if isinstance(value, list):
            for i, item in enumerate(value):
                text = self.string(item, f"{where}[{i}]")
                sep = "=" if "=" in text else ":"
                host, _, addr = text.partition(sep)
                pairs.append((host, addr, f"{where}[{i}]"))
        else:
            for host, addr in self.mapping(value, where).items():
                pairs.append((host, addr, f"{where}.{host}"))
        out = []
        for host, addr, here in pairs:
            address = self.string(addr, here).strip()
            if address.startswith("[") and address.endswith("]"):
                address = address[1:-1]
            if not host or not address:
                self.fail(here, "must be NAME:ADDRESS")
            if address != "host-gateway":
                try:
                    address = str(ipaddress.ip_address(address))
                except ValueError:
                    self.fail(here, f"{address!r} is not an IP address (or host-gateway)")
            out.append(f"{host}:{address}")
        return tuple(out)

    def ulimits(self, value: Any, where: str) -> dict[str, Ulimit]:
        """``ulimits``: ``name: N`` or ``name: {soft, hard}``."""
        out: dict[str, Ulimit] = {}
        for name, limit in self.mapping(value, where).items():
            here = f"{where}.{name}"
            if not re.fullmatch(r"[a-z]+", name):
                self.fail(here, f"{name!r} is not a ulimit name (nofile, nproc, memlock, ...)")
            if isinstance(limit, dict):
                body = self.mapping(limit, here)
                self.check_keys(body, here, ("soft", "hard"))
                if body.get("soft") is None or body.get("hard") is None:
                    self.fail(here, "needs both soft and hard")
                soft = self.integer(body["soft"], f"{here}.soft")
                hard = self.integer(body["hard"], f"{here}.hard")
            else:
                soft = hard = self.integer(limit, here)
            if hard != -1 and soft > hard:
                self.fail(here, f"soft limit {soft} is above the hard limit {hard}")
            out[name] = self.model(Ulimit, here, soft=soft, hard=hard)
        return out

    def logging(self, value: Any, where: str) -> LoggingSpec:
        body = self.mapping(value, where)
        self.check_keys(body, where, ("driver", "options"))
        driver = None
        if body.get("driver") is not None:
            driver = self.string(body["driver"], f"{where}.driver")
        options = self.string_map(body.get("options"), f"{where}.options")
        logging: LoggingSpec = self.model(LoggingSpec, where, driver=driver, options=options)
        return logging

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

    def restart(self, value: Any, where: str) -> tuple[str, int | None]:
        """``restart``: a policy, and ``on-failure:N``'s retry limit."""
        text = self.string(value, where)
        if text.startswith("on-failure:"):
            count = text.partition(":")[2]
            if not count.isdigit():
                self.fail(where, f"{text!r}: the retry limit must be a number (on-failure:3)")
            return "on-failure", int(count)
        if text not in RESTART_POLICIES:
            self.fail(where, f"{text!r} must be one of {', '.join(RESTART_POLICIES)}")
        return text, None

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
        return self.volumes[source]

    def service_volumes(
        self, value: Any, where: str
    ) -> tuple[tuple[VolumeSpec, ...], tuple[str, ...]]:
        """Mounts, and the ``type: tmpfs`` entries as ``tmpfs`` strings."""
        if value is None:
            return (), ()
        if not isinstance(value, list):
            self.fail(where, f"must be a list, not {type_name(value)}")
        out: list[VolumeSpec] = []
        tmpfs: list[str] = []
        for i, item in enumerate(value):
            here = f"{where}[{i}]"
            if isinstance(item, dict):
                body = self.mapping(item, here)
                if body.get("type") == "tmpfs":
                    tmpfs.append(self.volume_tmpfs(body, here))
                else:
                    out.append(self.volume_long(body, here))
            else:
                out.append(self.volume_short(self.string(item, here), here))
        return tuple(out), tuple(tmpfs)

    def volume_tmpfs(self, body: dict[str, Any], where: str) -> str:
        self.check_keys(body, where, ("type", "target", "read_only", "tmpfs"))
        if body.get("target") is None:
            self.fail(f"{where}.target", "required")
        target = self.absolute_path(body["target"], f"{where}.target")
        options = self.mapping(body.get("tmpfs"), f"{where}.tmpfs")
        self.check_keys(options, f"{where}.tmpfs", ("size", "mode"))
        parts = []
        if options.get("size") is not None:
            parts.append(f"size={self.size(options['size'], f'{where}.tmpfs.size')}")
        if options.get("mode") is not None:
            mode = read_mode(self, options["mode"], f"{where}.tmpfs.mode", highest=0o7777)
            parts.append(f"mode={mode:o}")
        if body.get("read_only") is not None and self.boolean(
            body["read_only"], f"{where}.read_only"
        ):
            parts.append("ro")
        return f"{target}:{','.join(parts)}" if parts else target

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
        options: dict[str, Any] = {}
        if len(parts) == 3:
            for option in parts[2].split(","):
                if option in ("ro", "rw"):
                    read_only = option == "ro"
                elif option in ("z", "Z"):
                    options["selinux"] = option
                elif option == "nocopy":
                    options["nocopy"] = True
                elif option not in ("consistent", "cached", "delegated"):
                    self.fail(where, f"{text!r}: volume option {option!r} is not supported")
        if not source:
            self.fail(where, f"{text!r} has an empty source")
        if not target.startswith("/"):
            self.fail(where, f"{text!r}: the target {target!r} must be an absolute path")
        if source.startswith((".", "/", "~")):
            kind, source = "bind", self.bind_source(source, where)
            if options.get("nocopy"):
                self.fail(where, f"{text!r}: nocopy is for named volumes")
        else:
            kind, source = "volume", self.named_volume(source, where)
            options.update(self.volume_extras.get(source, {}))
        volume: VolumeSpec = self.model(
            VolumeSpec,
            where,
            type=kind,
            source=source,
            target=target,
            read_only=read_only,
            **options,
        )
        return volume

    def volume_long(self, body: dict[str, Any], where: str) -> VolumeSpec:
        self.check_keys(
            body,
            where,
            ("type", "source", "target", "read_only", "consistency", "volume", "bind"),
        )
        kind = body.get("type")
        if kind is None:
            self.fail(f"{where}.type", "required (volume, bind or tmpfs)")
        if kind not in ("volume", "bind"):
            self.fail(
                f"{where}.type", f"{kind!r} is not supported by Shoal; use volume, bind or tmpfs"
            )
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
        options: dict[str, Any] = {}
        if kind == "volume":
            options.update(self.volume_extras.get(source, {}))
        for section in ("volume", "bind"):
            if body.get(section) is not None and section != kind:
                self.fail(f"{where}.{section}", f"only for type: {section}")
        if kind == "volume" and body.get("volume") is not None:
            here = f"{where}.volume"
            volume_options = self.mapping(body["volume"], here)
            self.check_keys(volume_options, here, ("nocopy",), {"subpath": "needs Docker 26"})
            if volume_options.get("nocopy") is not None:
                options["nocopy"] = self.boolean(volume_options["nocopy"], f"{here}.nocopy")
        if kind == "bind" and body.get("bind") is not None:
            here = f"{where}.bind"
            bind_options = self.mapping(body["bind"], here)
            self.check_keys(bind_options, here, ("create_host_path", "propagation", "selinux"))
            if bind_options.get("create_host_path") is not None:
                options["create_host_path"] = self.boolean(
                    bind_options["create_host_path"], f"{here}.create_host_path"
                )
            if bind_options.get("selinux") is not None:
                label = self.string(bind_options["selinux"], f"{here}.selinux")
                if label not in ("z", "Z"):
                    self.fail(f"{here}.selinux", f"{label!r} must be z or Z")
                options["selinux"] = label
            if bind_options.get("propagation") is not None:
                self.fail(f"{here}.propagation", "not supported by Shoal")
        volume: VolumeSpec = self.model(
            VolumeSpec,
            where,
            type=kind,
            source=source,
            target=target,
            read_only=read_only,
            **options,
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
            body,
            where,
            ("test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"),
        )
        disabled = body.get("disable") is not None and self.boolean(
            body["disable"], f"{where}.disable"
        )
        test_value = body.get("test")
        if disabled:
            if test_value is not None:
                self.fail(where, "disable: true and test cannot be set together")
            return HealthSpec(test=("NONE",))  # also turns off the image's own healthcheck
        if test_value is None:
            if all(v is None for k, v in body.items() if k != "disable" and k[:2] != "x-"):
                return None  # only disable: false, as if no healthcheck were given
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
                return HealthSpec(test=("NONE",))
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
            retries = self.integer(body["retries"], f"{where}.retries")
            if retries != 0:  # 0: Docker's default (3)
                values["retries"] = retries
        if body.get("start_interval") is not None:
            self.duration(body["start_interval"], f"{where}.start_interval")
            self.warnings.append(
                f"{where}.start_interval: not passed on (Docker 25 and later only); the"
                " interval applies from the start"
            )
        try:
            return HealthSpec(**values)
        except ValidationError as exc:
            loc, message = model_error(exc)
            self.fail(f"{where}{loc}", message)

    def depends_on(self, name: str, value: Any, where: str) -> tuple[str, ...]:
        """A list of service names, or a mapping of names to ``{condition, required,
        restart}``. Services deploy in this order, each after its dependencies are
        healthy (or running); ``service_completed_successfully`` deploys the dependency
        as a task that must exit 0."""
        if value is None:
            return ()
        names: list[str] = []
        if isinstance(value, list):
            names = [self.string(item, f"{where}[{i}]") for i, item in enumerate(value)]
        else:
            conditions: dict[str, str] = {}
            for dependency, options in self.mapping(value, where).items():
                here = f"{where}.{dependency}"
                body = self.mapping(options, here)
                self.check_keys(body, here, ("condition", "required", "restart"))
                condition = body.get("condition", "service_started")
                if condition not in _DEPENDENCY_CONDITIONS:
                    self.fail(
                        f"{here}.condition",
                        f"{condition!r} must be one of {', '.join(_DEPENDENCY_CONDITIONS)}",
                    )
                if body.get("required") is not None:
                    self.boolean(body["required"], f"{here}.required")
                if body.get("restart") is not None and self.boolean(
                    body["restart"], f"{here}.restart"
                ):
                    self.fail(f"{here}.restart", "restarting dependents is not supported by Shoal")
                conditions[dependency] = condition
                names.append(dependency)
            self.conditions[name] = conditions
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
            body,
            where,
            (
                "update_config",
                "rollback_config",
                "resources",
                "mode",
                "replicas",
                "restart_policy",
                "labels",
                "placement",
            ),
            _DEPLOY_REFUSED,
        )
        if body.get("placement") is not None:
            self.mapping(body["placement"], f"{where}.placement")
            self.warnings.append(
                f"{where}.placement: Swarm's placement is ignored; Shoal deploys to the hosts"
                " you target (-H, -l)"
            )
        mode = body.get("mode")
        if mode is not None and mode not in ("global", "replicated"):
            self.fail(
                f"{where}.mode",
                f"{mode!r}: Shoal runs one container of a service per host (mode: global)",
            )
        if body.get("replicas") is not None:
            replicas = self.integer(body["replicas"], f"{where}.replicas")
            if replicas < 0:
                self.fail(f"{where}.replicas", f"{replicas} must not be negative")
            if replicas > 1:
                self.warnings.append(
                    f"{where}.replicas: {replicas}: Shoal runs one container of the service on"
                    " every targeted host; target as many hosts as you want replicas (-H, -l)"
                )
        if body.get("labels") is not None:
            self.labels(body["labels"], f"{where}.labels")
            self.warnings.append(
                f"{where}.labels: Swarm service labels are ignored (container labels go under"
                " the service's labels)"
            )
        update = rollback = None
        if body.get("update_config") is not None:
            update = self.rollout(body["update_config"], f"{where}.update_config", rollback=False)
        if body.get("rollback_config") is not None:
            rollback = self.rollout(
                body["rollback_config"], f"{where}.rollback_config", rollback=True
            )
        if body.get("restart_policy") is not None:
            self.restart_policy(body["restart_policy"], f"{where}.restart_policy", spec)
        resources = self.mapping(body.get("resources"), f"{where}.resources")
        self.check_keys(resources, f"{where}.resources", ("limits", "reservations"))
        here = f"{where}.resources.limits"
        limits = self.mapping(resources.get("limits"), here)
        self.check_keys(limits, here, ("memory", "cpus", "pids"))
        self.set_limits(
            limits, here, spec, {"memory": "mem_limit", "cpus": "cpus", "pids": "pids_limit"}
        )
        here = f"{where}.resources.reservations"
        reservations = self.mapping(resources.get("reservations"), here)
        self.check_keys(
            reservations,
            here,
            ("memory", "cpus"),
            {
                "devices": "device reservations (GPUs) are not supported by Shoal yet",
                "generic_resources": "Swarm's generic resources; not supported by Shoal",
            },
        )
        self.set_limits(reservations, here, spec, {"memory": "mem_reservation"})
        if reservations.get("cpus") is not None:
            self.number(reservations["cpus"], f"{here}.cpus")
            self.warnings.append(
                f"{here}.cpus: Docker reserves no CPU for a single container; ignored"
            )
        return update, rollback

    def set_limits(
        self, body: dict[str, Any], where: str, spec: dict[str, Any], fields: dict[str, str]
    ) -> None:
        """``deploy.resources`` values into their service keys; a conflict is an error."""
        readers = {"memory": self.size, "cpus": self.number, "pids": self.integer}
        for key, field_name in fields.items():
            if body.get(key) is None:
                continue
            limit = readers[key](body[key], f"{where}.{key}")
            current = spec.get(field_name)
            if current is not None and current != limit:
                self.fail(
                    f"{where}.{key}",
                    f"{body[key]!r} differs from the service's {field_name}; set one of them",
                )
            spec[field_name] = limit

    def restart_policy(self, value: Any, where: str, spec: dict[str, Any]) -> None:
        """``deploy.restart_policy``: condition and max_attempts, as a container restart."""
        body = self.mapping(value, where)
        self.check_keys(body, where, ("condition", "max_attempts", "delay", "window"))
        condition = self.string(body.get("condition", "any"), f"{where}.condition")
        if condition not in _RESTART_CONDITIONS:
            self.fail(f"{where}.condition", f"{condition!r} must be none, on-failure or any")
        policy = _RESTART_CONDITIONS[condition]
        if spec.get("restart") is not None and spec["restart"] != policy:
            self.fail(
                f"{where}.condition",
                f"{condition!r} differs from the service's restart: {spec['restart']}; set one",
            )
        spec["restart"] = policy
        if body.get("max_attempts") is not None:
            attempts = self.integer(body["max_attempts"], f"{where}.max_attempts")
            if policy != "on-failure":
                self.fail(f"{where}.max_attempts", "Docker limits retries only for on-failure")
            if attempts < 0:
                self.fail(f"{where}.max_attempts", f"{attempts} must not be negative")
            current = spec.get("restart_max_attempts")
            if current is not None and current != attempts:
                self.fail(
                    f"{where}.max_attempts",
                    f"{attempts} differs from the service's restart: on-failure:{current}; set one",
                )
            spec["restart_max_attempts"] = attempts
        for key in ("delay", "window"):
            if body.get(key) is not None:
                self.duration(body[key], f"{where}.{key}")
                self.warnings.append(f"{where}.{key}: Docker has no restart {key}; ignored")

"""Services: the deployable unit (one compose service per host) and its verbs' messages."""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
NETWORK_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
CONTAINER_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
FILE_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"
PLATFORM_PATTERN = r"^[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?$"
REVISION_LABEL = "shoal.revision"
SPEC_HASH_LABEL = "shoal.spec-hash"

# A Docker image reference: [registry[:port]/]path[:tag][@digest]; never a flag, never
# whitespace or control characters. As Docker reads it, the first component names a
# registry only if it has a "." or ":" or is "localhost".
_REGISTRY_RE = re.compile(r"^(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*)(?::[0-9]{1,5})?$")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(
    rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
)


def validate_image_ref(value: str) -> str:
    """Return ``value`` if it is a plain image reference, else raise ValueError."""
    shown = value[:60] if isinstance(value, str) else type(value).__name__
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValueError(f"invalid image reference {shown!r}")
    head, slash, rest = value.partition("/")
    if slash and ("." in head or ":" in head or head == "localhost"):
        if not _REGISTRY_RE.fullmatch(head):
            raise ValueError(f"invalid registry in image reference {shown!r}")
        path = rest
    else:
        path = value
    if not _REPO_RE.fullmatch(path):
        raise ValueError(f"invalid image reference {shown!r}")
    return value


class Order(StrEnum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class FailureAction(StrEnum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class PortSpec(_Model):
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp", "sctp"] = "tcp"
    host_port: int | None = Field(default=None, ge=1, le=65535)
    host_ip: str | None = Field(default=None, max_length=64)


class VolumeSpec(_Model):
    type: Literal["volume", "bind"]
    source: str = Field(min_length=1, max_length=4096)
    target: str = Field(min_length=1, max_length=4096)
    read_only: bool = False
    nocopy: bool = Field(
        default=False, description="volume.nocopy: do not copy the image's files in."
    )
    create_host_path: bool = Field(
        default=True, description="bind.create_host_path: create a missing bind source directory."
    )
    selinux: Literal["z", "Z"] | None = Field(
        default=None, description="Relabel the mount: z shared, Z private (SELinux hosts)."
    )
    driver_opts: dict[str, str] = Field(
        default_factory=dict, description="A named volume's local driver options."
    )
    volume_labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"mount target {value!r} must be an absolute path")
        return value


class HealthSpec(_Model):
    test: tuple[str, ...] = Field(min_length=1, description="e.g. ('CMD-SHELL', 'curl -f …')")
    interval: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=1, le=1000)
    start_period: float = Field(default=0.0, ge=0)


class IpamPool(_Model):
    """One ``ipam.config`` entry of a network."""

    subnet: str | None = Field(default=None, max_length=64)
    ip_range: str | None = Field(default=None, max_length=64)
    gateway: str | None = Field(default=None, max_length=64)
    aux_addresses: dict[str, str] = Field(default_factory=dict)


class IpamSpec(_Model):
    driver: str | None = Field(default=None, max_length=128)
    config: tuple[IpamPool, ...] = ()
    options: dict[str, str] = Field(default_factory=dict)


class NetworkSpec(_Model):
    """A network as the compose file defines it (a host creates it, or finds it if external)."""

    name: str = Field(pattern=NETWORK_NAME_PATTERN, description="The engine's network name.")
    external: bool = False
    driver: str | None = Field(default=None, max_length=128, description="None: bridge.")
    driver_opts: dict[str, str] = Field(default_factory=dict)
    ipam: IpamSpec | None = None
    internal: bool = False
    attachable: bool = False
    enable_ipv6: bool = False
    labels: dict[str, str] = Field(default_factory=dict)

    def definition_hash(self) -> str:
        """A stable hash of the definition, kept in the network's ``shoal.network-hash``."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class NetworkAttachment(_Model):
    """A service's place on one network: aliases others resolve it by, a fixed address."""

    network: NetworkSpec
    aliases: tuple[str, ...] = Field(default=(), description="Besides the service name.")
    ipv4_address: str | None = Field(default=None, max_length=64)
    ipv6_address: str | None = Field(default=None, max_length=64)
    priority: int = 0


class FileMount(_Model):
    """A secret or config mounted into the container as a file.

    The value never travels in the spec: ``digest`` (a slow salted hash of it) makes a
    changed value a changed spec, and the value itself travels sealed to each host.
    ``external`` names a secret already stored on the host (``shoal secret set``).
    """

    kind: Literal["secret", "config"]
    name: str = Field(pattern=FILE_NAME_PATTERN)
    target: str = Field(min_length=2, max_length=4096)
    uid: str | None = Field(default=None, pattern=r"^\d{1,10}$")
    gid: str | None = Field(default=None, pattern=r"^\d{1,10}$")
    mode: int = Field(default=0o444, ge=0, le=0o777)
    external: bool = False
    digest: str = Field(default="", max_length=128)

    @field_validator("target")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"file target {value!r} must be an absolute path without '..'")
        return value

    @property
    def key(self) -> str:
        """The name its sealed value travels under: ``secret:NAME`` or ``config:NAME``."""
        return f"{self.kind}:{self.name}"


class Ulimit(_Model):
    soft: int = Field(ge=-1)
    hard: int = Field(ge=-1)


class LoggingSpec(_Model):
    driver: str | None = Field(default=None, max_length=128)
    options: dict[str, str] = Field(default_factory=dict)


class RolloutConfig(_Model):
    """``deploy.update_config`` / ``deploy.rollback_config``: defaults for a rollout."""

    parallelism: str = Field(default="1", pattern=r"^\d+%?$", description="N or N%.")
    delay: float = Field(default=0.0, ge=0)
    failure_action: FailureAction = FailureAction.PAUSE
    monitor: float = Field(default=5.0, ge=0)
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    order: Order = Order.STOP_FIRST


class ServiceSpec(_Model):
    """One compose service, as a host runs it."""

    name: str = Field(pattern=SERVICE_NAME_PATTERN)
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: dict[str, str] = Field(default_factory=dict)
    ports: tuple[PortSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    restart: Literal["no", "always", "on-failure", "unless-stopped"] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    healthcheck: HealthSpec | None = None
    user: str | None = Field(default=None, max_length=256)
    working_dir: str | None = Field(default=None, max_length=4096)
    network_mode: str | None = Field(default=None, max_length=256)
    mem_limit: int | None = Field(default=None, gt=0, description="Bytes.")
    cpus: float | None = Field(default=None, gt=0)
    privileged: bool = False
    pid: str | None = Field(default=None, max_length=256)
    ipc: str | None = Field(default=None, max_length=256)
    devices: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    stop_signal: str | None = Field(default=None, max_length=32)
    stop_grace_period: float | None = Field(default=None, ge=0)
    depends_on: tuple[str, ...] = ()
    # Added after the first release: in the spec hash only when set (see spec_hash).
    networks: tuple[NetworkAttachment, ...] = ()
    secrets: tuple[FileMount, ...] = Field(default=(), description="Secrets and configs.")
    expose: tuple[str, ...] = Field(default=(), description="'80/tcp': exposed, not published.")
    container_name: str | None = Field(default=None, pattern=CONTAINER_NAME_PATTERN)
    platform: str | None = Field(default=None, pattern=PLATFORM_PATTERN)
    pull_policy: Literal["always", "missing", "never"] | None = Field(
        default=None, description="None: always pull (the deploy default)."
    )
    extra_hosts: tuple[str, ...] = Field(default=(), description="'name:address' entries.")
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = Field(default=(), description="'/path[:options]' entries.")
    ulimits: dict[str, Ulimit] = Field(default_factory=dict)
    init: bool | None = None
    read_only: bool = False
    shm_size: int | None = Field(default=None, gt=0, description="Bytes.")
    sysctls: dict[str, str] = Field(default_factory=dict)
    group_add: tuple[str, ...] = ()
    hostname: str | None = Field(default=None, max_length=253)
    domainname: str | None = Field(default=None, max_length=253)
    mac_address: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")
    logging: LoggingSpec | None = None
    mem_reservation: int | None = Field(default=None, gt=0, description="Bytes.")
    restart_max_attempts: int | None = Field(default=None, ge=0)
    tty: bool = False
    stdin_open: bool = False
    pids_limit: int | None = Field(default=None, ge=-1)
    cpu_shares: int | None = Field(default=None, ge=0)
    cpuset: str | None = Field(default=None, max_length=256)
    memswap_limit: int | None = Field(default=None, ge=-1)
    oom_score_adj: int | None = Field(default=None, ge=-1000, le=1000)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return validate_image_ref(value)

    @field_validator("labels")
    @classmethod
    def _no_shoal_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("shoal.") and key != "shoal.keep":
                raise ValueError(f"label {key!r} is reserved for Shoal")
        return value

    @field_validator("container_name")
    @classmethod
    def _not_a_revision_name(cls, value: str | None) -> str | None:
        if value is not None and re.search(r"\.r\d+$", value):
            raise ValueError(f"container_name {value!r} must not end like a revision (.rN)")
        return value

    def spec_hash(self) -> str:
        """A stable hash of everything that defines the running container.

        Fields added after the first release count only when set, so that an upgrade of
        Shoal leaves the hash of an existing service as it was.
        """
        canonical = json.dumps(_hashable(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def fixed_host_ports(self) -> list[int]:
        return [p.host_port for p in self.ports if p.host_port is not None]


_FIRST_RELEASE_FIELDS = frozenset(
    {
        "name", "image", "command", "entrypoint", "environment", "ports", "volumes",
        "restart", "labels", "healthcheck", "user", "working_dir", "network_mode",
        "mem_limit", "cpus", "privileged", "pid", "ipc", "devices", "cap_add", "cap_drop",
        "security_opt", "stop_signal", "stop_grace_period", "depends_on",
    }
)  # fmt: skip


def _later_field_defaults() -> dict[str, Any]:
    fields = ServiceSpec.model_fields
    return {
        name: json.loads(json.dumps(info.get_default(call_default_factory=True), default=list))
        for name, info in fields.items()
        if name not in _FIRST_RELEASE_FIELDS
    }


_LATER_FIELD_DEFAULTS = _later_field_defaults()
_LATER_VOLUME_DEFAULTS: dict[str, Any] = {
    "nocopy": False,
    "create_host_path": True,
    "selinux": None,
    "driver_opts": {},
    "volume_labels": {},
}


def _hashable(spec: ServiceSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json", exclude={"depends_on"})
    for key in [k for k in data if data[k] == _LATER_FIELD_DEFAULTS.get(k, _UNSET)]:
        del data[key]
    for volume in data["volumes"]:
        for key, default in _LATER_VOLUME_DEFAULTS.items():
            if volume.get(key) == default:
                del volume[key]
    return data


_UNSET = object()


def spec_diff(old: ServiceSpec | None, new: ServiceSpec) -> list[str]:
    """Human lines naming what changes between two specs."""
    if old is None:
        return ["new service"]
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    lines = _file_diff(old.secrets, new.secrets)
    for key in sorted(set(before) | set(after)):
        if key == "secrets":
            continue
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}")
    return lines


def _file_diff(old: tuple[FileMount, ...], new: tuple[FileMount, ...]) -> list[str]:
    """Secret and config changes by name: a digest never appears in a diff."""
    before = {m.key: m for m in old}
    after = {m.key: m for m in new}
    lines = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            lines.append(f"{key}: added")
        elif key not in after:
            lines.append(f"{key}: removed")
        elif before[key].digest != after[key].digest:
            lines.append(f"{key}: value changed")
        elif before[key] != after[key]:
            lines.append(f"{key}: mount changed")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


# --- verbs ----------------------------------------------------------------------------


class DeployPhase(StrEnum):
    """``Progress.phase`` values a host sends during deploy, rollback and pull."""

    PLANNING = "planning"
    PULLING = "pulling"  # current/total: bytes downloaded so far / to download
    CREATING = "creating"
    STOPPING = "stopping"  # the old container (stop-first)
    STARTING = "starting"
    HEALTH = "health"  # waiting for healthy, or running through the monitor window
    REMOVING = "removing"  # the old container, after success
    ROLLING_BACK = "rolling-back"  # restoring the previous revision after a failure


class DeployAction(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    ROLLED_BACK = "rolled_back"


SEALED_VALUE_MAX = 350_000
"""Characters of one sealed value (base64 of a box of up to 256 KiB)."""


class DeployArgs(_Model):
    service: ServiceSpec
    order: Order = Order.STOP_FIRST
    monitor: float = Field(default=5.0, ge=0, le=3600, description="Seconds running/healthy.")
    health_timeout: float = Field(default=300.0, gt=0, le=86400)
    dry_run: bool = False
    wait_for: Literal["running", "completed"] = Field(
        default="running",
        description="completed: a task; success is exiting 0 (service_completed_successfully).",
    )
    sealed: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per host id, the values of the spec's secrets and configs by key"
        " (secret:NAME), each a base64 sealed box to that host's box_key.",
    )

    @field_validator("sealed")
    @classmethod
    def _sealed_sizes(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for host, boxes in value.items():
            for key, box in boxes.items():
                if len(box) > SEALED_VALUE_MAX:
                    raise ValueError(f"sealed value {key!r} for {host!r} is too large")
        return value

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, ("<sealed>" if name == "sealed" and value else value)


class DeployResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    service: str
    action: DeployAction
    revision: int = Field(ge=0)
    previous_revision: int | None = None
    image: str
    image_id: str = ""
    spec_hash: str
    container_id: str = ""
    diff: list[str] = Field(default_factory=list)
    dry_run: bool = False


class RollbackArgs(_Model):
    service: str = Field(pattern=SERVICE_NAME_PATTERN)
    order: Order = Order.STOP_FIRST
    monitor: float = Field(default=5.0, ge=0, le=3600)
    health_timeout: float = Field(default=300.0, gt=0, le=86400)


class RemoveArgs(_Model):
    service: str = Field(pattern=SERVICE_NAME_PATTERN)


class RemoveResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    service: str
    removed: list[str] = Field(default_factory=list, description="Container ids.")


class ServicesArgs(_Model):
    service: str | None = Field(default=None, pattern=SERVICE_NAME_PATTERN)


class ServiceStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    name: str
    revision: int
    image: str
    image_id: str = ""
    spec_hash: str
    state: str = Field(description="Container state: running, exited, missing, …")
    health: str = Field(default="", description="healthy, unhealthy, starting, or '' (none).")
    container_id: str = ""
    previous_revision: int | None = None
    updated_at: AwareDatetime | None = None


class ServicesResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    services: list[ServiceStatus]


class PullArgs(_Model):
    image: str

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return validate_image_ref(value)


class PullResult(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    image: str
    image_id: str
    digest: str = ""
    architecture: str = ""
    changed: bool = Field(description="True if the pull brought a different image id.")

"""Services: the deployable unit (one compose service per host) and its verbs' messages."""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

SERVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
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

    def spec_hash(self) -> str:
        """A stable hash of everything that defines the running container."""
        canonical = json.dumps(
            self.model_dump(mode="json", exclude={"depends_on"}),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def fixed_host_ports(self) -> list[int]:
        return [p.host_port for p in self.ports if p.host_port is not None]


def spec_diff(old: ServiceSpec | None, new: ServiceSpec) -> list[str]:
    """Human lines naming what changes between two specs."""
    if old is None:
        return ["new service"]
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {_short(before.get(key))} -> {_short(after.get(key))}")
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


class DeployArgs(_Model):
    service: ServiceSpec
    order: Order = Order.STOP_FIRST
    monitor: float = Field(default=5.0, ge=0, le=3600, description="Seconds running/healthy.")
    health_timeout: float = Field(default=300.0, gt=0, le=86400)
    dry_run: bool = False


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

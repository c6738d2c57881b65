"""Verbs and their typed arguments and results."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from .envelope import HostId, wire_time
from .service import (
    FILE_NAME_PATTERN,
    SEALED_VALUE_MAX,
    DeployArgs,
    DeployResult,
    PullArgs,
    PullResult,
    RemoveArgs,
    RemoveResult,
    RollbackArgs,
    ServicesArgs,
    ServicesResult,
    validate_image_ref,
)

RESERVED_LABELS = frozenset({"host", "arch", "variant", "os", "kernel"})
"""Fact names that are selectable like labels, so agents may not set them as labels."""


class Verb(StrEnum):
    PING = "ping"
    PS = "ps"
    DF = "df"
    PRUNE = "prune"
    STATUS = "status"
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    REMOVE = "remove"
    SERVICES = "services"
    PULL = "pull"
    IMAGES = "images"
    LOGS = "logs"
    CANCEL = "cancel"
    STATS = "stats"
    INSPECT = "inspect"
    INFO = "info"
    EVENTS = "events"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    RM = "rm"
    SECRET = "secret"
    EXEC = "exec"
    RUN = "run"
    SECRETS = "secrets"
    UPGRADE = "upgrade"


class Role(StrEnum):
    """What a trusted key may do; each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _ROLE_RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


# --- ping / facts -------------------------------------------------------------


class DockerFacts(_Result):
    """What the agent knows of its Docker engine."""

    reachable: bool
    version: str | None = None
    api_version: str | None = None
    error: str | None = Field(default=None, description="Why the engine is unreachable.")


class ServiceBeat(_Result):
    """One service on a host as its heartbeat tells it: enough to see drift without asking."""

    name: str
    revision: int = 0
    spec_hash: str = ""
    state: str = Field(description="Container state: running, exited, missing, ...")
    health: str = ""


class AgentFacts(_Result):
    """An agent's facts: sent as heartbeats and as the result of ``ping``."""

    host_id: HostId
    instance: str = Field(description="Unique per agent process; tells two agents apart.")
    status: Literal["online", "leaving"] = "online"
    labels: dict[str, str] = Field(default_factory=dict)
    arch: str
    variant: str = ""
    os: str
    kernel: str
    hostname: str = ""
    docker: DockerFacts
    agent_version: str
    protocol_version: int
    started_at: AwareDatetime
    sent_at: AwareDatetime
    heartbeat_interval: float = Field(gt=0, description="Seconds between heartbeats.")
    insecure: bool = Field(
        default=False, description="True if the agent accepts unsigned requests (no trust file)."
    )
    box_key: str | None = Field(
        default=None,
        max_length=64,
        description="Base64 X25519 public key that secrets are sealed to (none: no secrets).",
    )
    services: list[ServiceBeat] = Field(
        default_factory=list, description="The services this host runs (deployed by Shoal)."
    )
    containers: int | None = Field(
        default=None, ge=0, description="Containers on the host, in any state (sampled)."
    )
    usage: HostStats | None = Field(
        default=None, description="CPU and memory of the host's running containers (sampled)."
    )
    usage_at: AwareDatetime | None = Field(default=None, description="When usage was sampled.")
    upgrade_failed: str | None = Field(
        default=None,
        max_length=600,
        description="Why this agent's last upgrade was rolled back (until the next one).",
    )

    def selectable(self) -> dict[str, str]:
        """Labels plus the facts selectable like labels."""
        selectable = dict(self.labels)
        selectable.update(host=self.host_id, arch=self.arch, os=self.os, kernel=self.kernel)
        if self.variant:
            selectable["variant"] = self.variant
        return selectable


class PingArgs(_Args):
    pass


# --- ps -----------------------------------------------------------------------

ContainerStatus = Literal[
    "created", "restarting", "running", "removing", "paused", "exited", "dead"
]


class PsArgs(_Args):
    all: bool = Field(default=False, description="Include stopped containers.")
    name: tuple[str, ...] = Field(default=(), description="Name filters (substring match).")
    label: tuple[str, ...] = Field(default=(), description="Label filters: 'k' or 'k=v'.")
    status: tuple[ContainerStatus, ...] = ()
    image: tuple[str, ...] = Field(default=(), description="Image (ancestor) filters.")

    @field_validator("name", "label", "image")
    @classmethod
    def _bounded(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > 32:
            raise ValueError("at most 32 filters of one kind")
        for item in value:
            if not item or len(item) > 256 or any(ord(c) < 32 for c in item):
                raise ValueError(f"invalid filter value {item[:40]!r}")
        return value


class PortMapping(_Result):
    private_port: int
    type: str = "tcp"
    public_port: int | None = None
    ip: str | None = None

    def __str__(self) -> str:
        if self.public_port is None:
            return f"{self.private_port}/{self.type}"
        return f"{self.ip or '0.0.0.0'}:{self.public_port}->{self.private_port}/{self.type}"


class ContainerSummary(_Result):
    id: str
    name: str
    image: str
    image_id: str = ""
    command: str = ""
    created: AwareDatetime
    state: str
    status: str
    ports: list[PortMapping] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class PsResult(_Result):
    containers: list[ContainerSummary]


# --- df and prune -------------------------------------------------------------

KEEP_LABEL = "shoal.keep"
"""Anything carrying ``shoal.keep=true`` is never pruned."""
SERVICE_LABEL = "shoal.service"
"""Containers of a Shoal-deployed service carry this label; prune never touches them."""
PREVIOUS_IMAGE_LABEL = "shoal.previous-image"
"""On a service container: the image of the previous revision, kept for rollback."""


class DiskKind(StrEnum):
    IMAGES = "images"
    CONTAINERS = "containers"
    VOLUMES = "volumes"
    BUILD_CACHE = "build-cache"


class PruneKind(StrEnum):
    CONTAINERS = "containers"
    IMAGES = "images"
    VOLUMES = "volumes"
    NETWORKS = "networks"
    BUILD_CACHE = "build-cache"


SYSTEM_PRUNE_KINDS = (
    PruneKind.CONTAINERS,
    PruneKind.IMAGES,
    PruneKind.NETWORKS,
    PruneKind.BUILD_CACHE,
)
"""What ``system`` means, as for ``docker system prune``: volumes only when named."""


class DfArgs(_Args):
    pass


class DiskUsage(_Result):
    """Usage of one kind of object on one host, in bytes."""

    count: int = Field(ge=0)
    active: int = Field(ge=0, description="Objects in use (by a container, or running).")
    size: int = Field(ge=0)
    reclaimable: int = Field(ge=0, description="Bytes held by objects not in use.")


class DfResult(_Result):
    usage: dict[DiskKind, DiskUsage]
    api_version: str = ""

    @property
    def total_size(self) -> int:
        return sum(u.size for u in self.usage.values())

    @property
    def total_reclaimable(self) -> int:
        return sum(u.reclaimable for u in self.usage.values())


_LABEL_FILTER_RE = re.compile(
    r"^(?P<neg>!)?(?P<key>[A-Za-z0-9][A-Za-z0-9._/-]{0,127})"
    r"(?:(?P<op>!?=)(?P<value>[^\x00-\x1f]{0,255}))?$"
)


@dataclass(frozen=True, slots=True)
class LabelFilter:
    """A docker-style label filter: ``k``, ``!k``, ``k=v`` or ``k!=v``."""

    key: str
    value: str | None
    negate: bool

    @classmethod
    def parse(cls, text: str) -> LabelFilter:
        m = _LABEL_FILTER_RE.fullmatch(text)
        if not m or (m["neg"] and m["op"]):
            raise ValueError(f"invalid label filter {text[:80]!r}: use k, !k, k=v or k!=v")
        negate = bool(m["neg"]) or m["op"] == "!="
        return cls(m["key"], m["value"] if m["op"] else None, negate)

    def matches(self, labels: dict[str, str]) -> bool:
        hit = self.key in labels if self.value is None else labels.get(self.key) == self.value
        return hit != self.negate

    def __str__(self) -> str:
        if self.value is None:
            return f"!{self.key}" if self.negate else self.key
        return f"{self.key}{'!=' if self.negate else '='}{self.value}"


class PruneArgs(_Args):
    kinds: tuple[PruneKind, ...] = Field(default=SYSTEM_PRUNE_KINDS, min_length=1)
    until: float | None = Field(
        default=None, gt=0, description="Only objects created more than this many seconds ago."
    )
    labels: tuple[str, ...] = Field(
        default=(),
        max_length=32,
        description="Label filters: 'k', '!k', 'k=v' or 'k!=v' (all must hold).",
    )
    all_images: bool = Field(default=False, description="Unused images, not only dangling ones.")
    volumes_all: bool = Field(
        default=False, description="With the volumes kind: named volumes too, not only anonymous."
    )
    dry_run: bool = False

    @field_validator("kinds")
    @classmethod
    def _unique(cls, value: tuple[PruneKind, ...]) -> tuple[PruneKind, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            LabelFilter.parse(text)
        return value

    def label_filters(self) -> tuple[LabelFilter, ...]:
        return tuple(LabelFilter.parse(text) for text in self.labels)


class PrunedItem(_Result):
    """One object removed (or that would be, in a dry run)."""

    id: str
    name: str = ""
    tags: list[str] = Field(default_factory=list)
    size: int = Field(default=0, ge=0, description="Bytes this object frees.")


class PruneFailure(_Result):
    id: str
    name: str = ""
    code: str
    message: str


class PruneKindResult(_Result):
    removed: list[PrunedItem] = Field(default_factory=list)
    failed: list[PruneFailure] = Field(default_factory=list)
    reclaimed: int = Field(default=0, ge=0)
    skipped: str = Field(default="", description="Why this kind was not pruned at all, if so.")


class PruneResult(_Result):
    dry_run: bool
    kinds: dict[PruneKind, PruneKindResult]
    protected: int = Field(
        default=0, ge=0, description="Objects that matched but were protected from removal."
    )

    @property
    def reclaimed(self) -> int:
        return sum(k.reclaimed for k in self.kinds.values())

    @property
    def removed_count(self) -> int:
        return sum(len(k.removed) for k in self.kinds.values())


# --- status -------------------------------------------------------------------


class StatusArgs(_Args):
    request_id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")


class StatusResult(_Result):
    """What this host knows of an earlier request id."""

    request_id: str
    state: Literal["unknown", "running", "finished", "interrupted"]
    verb: str | None = None
    ok: bool | None = None
    error_code: str | None = None
    error_message: str | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None


# --- audit ----------------------------------------------------------------------


class AuditRecord(_Result):
    """One decision on one request, published on ``<prefix>.audit.<host>``."""

    at: AwareDatetime
    host: HostId
    request_id: str
    verb: str
    sender: str = ""
    signer: str | None = Field(default=None, description="Name of the trusted key, if any.")
    key: str | None = Field(default=None, description="Public key that signed, if any.")
    role: str | None = None
    decision: Literal["accepted", "refused"]
    code: str | None = Field(default=None, description="Error code of a refusal or failure.")
    reason: str = ""
    outcome: Literal["ok", "error"] | None = None
    duration: float | None = None
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments, with possible secrets redacted."
    )


# --- events -------------------------------------------------------------------


class EventKind(StrEnum):
    STARTED = "started"
    STOPPING = "stopping"
    ENGINE_LOST = "engine_lost"
    ENGINE_REGAINED = "engine_regained"
    CONTAINER = "container"


CONTAINER_ACTIONS = frozenset(
    {
        "create",
        "start",
        "restart",
        "stop",
        "kill",
        "die",
        "oom",
        "destroy",
        "pause",
        "unpause",
        "rename",
        "update",
        "health_status",
    }
)
"""Docker container actions agents publish as ``container`` events (``health_status``
arrives as ``health_status: healthy`` and the like)."""


class ContainerEventInfo(_Result):
    """What a ``container`` event is about, from the Docker engine's event."""

    action: str = Field(description="Docker's action: start, die, health_status: healthy, …")
    id: str
    name: str = ""
    image: str = ""
    service: str = Field(default="", description="The shoal.service label, if any.")
    exit_code: int | None = Field(default=None, description="On die: the exit code.")


class AgentEvent(_Result):
    """An agent lifecycle or container event, published on ``<prefix>.events.<host>.<kind>``."""

    host_id: HostId
    instance: str
    kind: str
    at: AwareDatetime
    message: str = ""
    container: ContainerEventInfo | None = Field(
        default=None, description="For kind 'container': what happened to which container."
    )


# --- everyday container verbs ---------------------------------------------------------

CONTAINER_TARGET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
ContainerTarget = Annotated[
    str,
    Field(
        pattern=CONTAINER_TARGET_PATTERN,
        description="A container name or id, or the name of a service (label shoal.service): "
        "then that service's current container. A service name wins over a container name.",
    ),
]
StreamId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class ContainerRef(_Result):
    """The container a target resolved to on one host."""

    id: str
    name: str
    service: str = Field(default="", description="Its shoal.service label, if any.")
    state: str = ""


class ImagesArgs(_Args):
    all: bool = Field(default=False, description="Include intermediate images.")


class ImageSummary(_Result):
    id: str
    repo_tags: list[str] = Field(default_factory=list)
    repo_digests: list[str] = Field(default_factory=list)
    created: AwareDatetime
    size: int = Field(default=0, ge=0)
    architecture: str = ""
    variant: str = ""
    os: str = ""


class ImagesResult(_Result):
    images: list[ImageSummary]


MAX_LOG_LINES = 10_000
LOG_PHASE = "log"
"""``Progress.phase`` of messages that carry log lines (``logs`` with ``follow``)."""
LOG_KEEPALIVE_PHASE = "keepalive"
"""``Progress.phase`` a quiet ``logs`` stream sends, so it is not taken for a silent host."""
MAX_FOLLOW_SECONDS = 3600.0
"""Longest a ``logs`` follow lasts: agents may answer one request for an hour at most."""


class LogsArgs(_Args):
    target: ContainerTarget
    tail: int = Field(default=100, ge=0, le=MAX_LOG_LINES, description="Last N lines.")
    since: float | None = Field(
        default=None, gt=0, le=366 * 86400, description="Only lines of the last N seconds."
    )
    follow: bool = Field(
        default=False,
        description="Stream new lines as progress messages (phase 'log') until cancelled, "
        "the container stops or max_duration passes.",
    )
    stream_id: StreamId | None = Field(
        default=None, description="With follow: the id a 'cancel' request names to stop it."
    )
    max_duration: float = Field(default=MAX_FOLLOW_SECONDS, gt=0, le=MAX_FOLLOW_SECONDS)
    keepalive: float = Field(
        default=2.0, ge=0.5, le=30, description="With follow: seconds between keepalives."
    )

    @model_validator(mode="after")
    def _follow_needs_stream_id(self) -> LogsArgs:
        if self.follow and self.stream_id is None:
            raise ValueError("follow needs a stream_id")
        return self


class LogLine(_Result):
    time: AwareDatetime | None = None
    text: str


class LogsResult(_Result):
    container: ContainerRef
    lines: list[LogLine] = Field(default_factory=list)
    truncated: bool = Field(default=False, description="Older lines were left out (size).")
    streamed: int = Field(default=0, ge=0, description="With follow: lines sent as progress.")
    ended: str = Field(default="", description="With follow: why the stream ended.")


_LOG_STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_log_line(raw: str) -> LogLine:
    """A line as Docker gives it with timestamps: ``<RFC 3339 time> <text>``."""
    stamp, sep, text = raw.partition(" ")
    m = _LOG_STAMP_RE.fullmatch(stamp)
    if not sep or not m:
        return LogLine(text=raw)
    fraction = (m[2] or "0")[:6].ljust(6, "0")
    zone = "+00:00" if m[3] == "Z" else m[3]
    try:
        when = datetime.fromisoformat(f"{m[1]}.{fraction}{zone}")
    except ValueError:
        return LogLine(text=raw)
    return LogLine(time=when, text=text)


def encode_log_lines(lines: list[LogLine], limit: int = 4000) -> list[str]:
    """Lines packed into progress messages of at most ``limit`` characters each."""
    messages: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        stamp = wire_time(line.time) if line.time is not None else "-"
        item = f"{stamp} {line.text}"
        if len(item) > limit:
            item = item[: limit - 1] + "…"
        if current and size + len(item) + 1 > limit:
            messages.append("\n".join(current))
            current, size = [], 0
        current.append(item)
        size += len(item) + 1
    if current:
        messages.append("\n".join(current))
    return messages


def decode_log_lines(message: str) -> list[LogLine]:
    """The lines of one ``log`` progress message (see :func:`encode_log_lines`)."""
    lines = []
    for item in message.split("\n"):
        stamp, _, text = item.partition(" ")
        if stamp == "-":
            lines.append(LogLine(text=text))
            continue
        try:
            lines.append(LogLine(time=datetime.fromisoformat(stamp), text=text))
        except ValueError:
            lines.append(LogLine(text=item))
    return lines


class CancelArgs(_Args):
    stream_id: StreamId


class CancelResult(_Result):
    stream_id: str
    cancelled: bool = Field(description="False if no such stream ran (it had ended already).")


class StatsArgs(_Args):
    pass


class ContainerStats(_Result):
    """One sample of a running container, as ``docker stats --no-stream`` shows it."""

    id: str
    name: str
    service: str = ""
    cpu_percent: float = Field(ge=0, description="100 is one CPU fully used.")
    memory_usage: int = Field(ge=0, description="Bytes, page cache excluded (as docker).")
    memory_limit: int = Field(ge=0)
    memory_percent: float = Field(ge=0)
    net_rx: int = Field(default=0, ge=0)
    net_tx: int = Field(default=0, ge=0)
    block_read: int = Field(default=0, ge=0)
    block_write: int = Field(default=0, ge=0)
    pids: int = Field(default=0, ge=0)


class HostStats(_Result):
    """The sum over a host's running containers, and the host's capacity."""

    containers: int = Field(ge=0)
    cpus: int = Field(ge=0, description="CPUs of the host.")
    memory_total: int = Field(ge=0, description="Memory of the host, bytes.")
    cpu_percent: float = Field(ge=0)
    memory_usage: int = Field(ge=0)
    net_rx: int = Field(default=0, ge=0)
    net_tx: int = Field(default=0, ge=0)
    block_read: int = Field(default=0, ge=0)
    block_write: int = Field(default=0, ge=0)
    pids: int = Field(default=0, ge=0)


class StatsResult(_Result):
    host: HostStats
    containers: list[ContainerStats]


class InspectArgs(_Args):
    target: ContainerTarget


class InspectResult(_Result):
    container: ContainerRef
    details: dict[str, Any] = Field(description="The engine's inspect document, as docker shows.")


class InfoArgs(_Args):
    pass


class InfoResult(_Result):
    """Engine details of one host, as ``docker info`` shows them."""

    name: str
    server_version: str
    api_version: str = ""
    operating_system: str = ""
    os_type: str = ""
    kernel: str = ""
    architecture: str = ""
    cpus: int = 0
    memory_total: int = 0
    containers: int = 0
    containers_running: int = 0
    containers_paused: int = 0
    containers_stopped: int = 0
    images: int = 0
    storage_driver: str = ""
    logging_driver: str = ""
    cgroup_driver: str = ""
    cgroup_version: str = ""
    docker_root_dir: str = ""
    default_runtime: str = ""
    runtimes: list[str] = Field(default_factory=list)
    security_options: list[str] = Field(default_factory=list)
    live_restore: bool = False
    system_time: str = ""
    warnings: list[str] = Field(default_factory=list)


class EventsArgs(_Args):
    since: float = Field(
        gt=0,
        le=7 * 86400,
        description="Container events of the last N seconds (what the "
        "engine still holds: Docker keeps its most recent events only).",
    )


class EventsResult(_Result):
    events: list[AgentEvent]


class StartArgs(_Args):
    target: ContainerTarget


class StopArgs(_Args):
    target: ContainerTarget
    timeout: int | None = Field(
        default=None, ge=0, le=3600, description="Seconds before SIGKILL [the container's own]."
    )


class RestartArgs(_Args):
    target: ContainerTarget
    timeout: int | None = Field(
        default=None, ge=0, le=3600, description="Seconds before SIGKILL [the container's own]."
    )


class RmArgs(_Args):
    target: ContainerTarget
    force: bool = Field(default=False, description="Remove a running container (killing it).")
    volumes: bool = Field(default=False, description="Remove its anonymous volumes too.")


class ContainerActionResult(_Result):
    action: Literal["start", "stop", "restart", "rm"]
    container: ContainerRef
    before: str = Field(description="Container state before.")
    after: str = Field(description="Container state after ('removed' after rm).")
    changed: bool


# --- the verb table -----------------------------------------------------------


# --- exec / run -----------------------------------------------------------------

STDOUT_PHASE = "stdout"
STDERR_PHASE = "stderr"
"""``Progress.phase`` of the messages that carry a command's output (``message``: text)."""
OUTPUT_CHUNK = 4000
"""Characters of output per progress message."""
CAPTURE_DEFAULT = 4 * 1024 * 1024
"""Bytes of each of stdout and stderr kept in the result (beyond: ``truncated``)."""
CAPTURE_MAX = 16 * 1024 * 1024

Word = Annotated[str, Field(max_length=8192)]


class _Command(_Args):
    command: tuple[Word, ...] = Field(min_length=1, max_length=512)
    user: str | None = Field(default=None, max_length=256)
    workdir: str | None = Field(default=None, max_length=4096)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    timeout: float = Field(default=60.0, gt=0, le=3600, description="Killed after.")
    capture: int = Field(default=CAPTURE_DEFAULT, ge=0, le=CAPTURE_MAX)

    @field_validator("env")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"invalid variable name {key[:60]!r}")
        return value

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"workdir {value[:60]!r} must be an absolute path")
        return value


class ExecArgs(_Command):
    """Run ``command`` in a container (or a service's current container), as docker exec."""

    target: str = Field(pattern=CONTAINER_TARGET_PATTERN)


class RunArgs(_Command):
    """Run ``command`` in a new container of ``image`` that is removed after (docker run --rm)."""

    image: str
    network: str = Field(default="none", max_length=256, description="none unless given.")
    pull: bool = Field(default=True, description="Pull the image first if it is missing.")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return validate_image_ref(value)


class ExecResult(_Result):
    """A command's outcome on one host (``exec`` and ``run``)."""

    exit_code: int | None = Field(description="None when it was killed at the timeout.")
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    truncated: bool = Field(default=False, description="Output beyond capture was dropped.")
    duration: float = Field(default=0.0, ge=0)
    container: ContainerRef | None = None
    image: str = ""


# --- upgrade --------------------------------------------------------------------

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"


class UpgradeArgs(_Args):
    """Replace this agent with another version (``shoal agents upgrade``).

    An agent in a container starts a helper container that swaps it for a container of
    the new image (same settings, mounts and networks) and restores the old one unless
    the new agent turns healthy within ``deadline`` seconds.
    """

    image: str | None = Field(
        default=None, description="The new agent image; default: this agent's image at version."
    )
    version: str | None = Field(
        default=None, pattern=VERSION_PATTERN, description="The version the new agent must report."
    )
    deadline: float = Field(
        default=120.0, gt=0, le=3600, description="Seconds the new agent has to turn healthy."
    )
    pull: Literal["missing", "always"] = "missing"
    dry_run: bool = False

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else validate_image_ref(value)

    @model_validator(mode="after")
    def _target(self) -> UpgradeArgs:
        if self.image is None and self.version is None:
            raise ValueError("give the new image, the new version, or both")
        return self


class UpgradeResult(_Result):
    """An upgrade under way on one host: the helper container, or the venv, that carries it."""

    mode: Literal["container", "process"] = Field(
        default="container",
        description="container: a helper swaps containers; process: the agent restarts"
        " into a new venv under its service manager.",
    )
    container: str = Field(default="", description="The agent's container (its name).")
    old_image: str = ""
    new_image: str = ""
    old_version: str
    instance: str = Field(
        default="", description="The answering agent's instance: the one being replaced."
    )
    venv: str = Field(default="", description="process: the venv the new version runs from.")
    old_venv: str = Field(default="", description="process: the venv it falls back to.")
    helper: str = Field(default="", description="The helper container's id (none in a dry run).")
    dry_run: bool = False


# --- secret / secrets -----------------------------------------------------------


class SecretArgs(_Args):
    """Store (set) or delete (rm) a secret on the host, for services that mount it external."""

    action: Literal["set", "rm"]
    name: str = Field(pattern=FILE_NAME_PATTERN)
    sealed: dict[str, str] = Field(
        default_factory=dict,
        description="set: per host id, the value sealed to that host's box_key (base64).",
    )

    @field_validator("sealed")
    @classmethod
    def _sizes(cls, value: dict[str, str]) -> dict[str, str]:
        for host, box in value.items():
            if len(box) > SEALED_VALUE_MAX:
                raise ValueError(f"sealed value for {host!r} is too large")
        return value

    @model_validator(mode="after")
    def _value_for_set(self) -> SecretArgs:
        if self.action == "rm" and self.sealed:
            raise ValueError("rm takes no value")
        return self


class SecretResult(_Result):
    name: str
    action: Literal["set", "rm"]
    changed: bool = Field(description="set: the value differs from before; rm: it existed.")


class SecretsArgs(_Args):
    pass


class SecretsResult(_Result):
    secrets: list[str] = Field(description="Names of the secrets stored on the host.")


@dataclass(frozen=True, slots=True)
class VerbSpec:
    verb: Verb
    args: type[BaseModel]
    result: type[BaseModel]
    role: Role
    mutating: bool
    summary: str


VERBS: dict[Verb, VerbSpec] = {
    Verb.PING: VerbSpec(Verb.PING, PingArgs, AgentFacts, Role.VIEWER, False, "The agent's facts."),
    Verb.PS: VerbSpec(Verb.PS, PsArgs, PsResult, Role.VIEWER, False, "List containers."),
    Verb.DF: VerbSpec(Verb.DF, DfArgs, DfResult, Role.VIEWER, False, "Disk usage per kind."),
    Verb.PRUNE: VerbSpec(
        Verb.PRUNE, PruneArgs, PruneResult, Role.OPERATOR, True, "Remove unused objects."
    ),
    Verb.STATUS: VerbSpec(
        Verb.STATUS, StatusArgs, StatusResult, Role.VIEWER, False, "Outcome of a request id."
    ),
    Verb.DEPLOY: VerbSpec(
        Verb.DEPLOY, DeployArgs, DeployResult, Role.OPERATOR, True, "Deploy a service revision."
    ),
    Verb.ROLLBACK: VerbSpec(
        Verb.ROLLBACK,
        RollbackArgs,
        DeployResult,
        Role.OPERATOR,
        True,
        "Go back to the previous revision.",
    ),
    Verb.REMOVE: VerbSpec(
        Verb.REMOVE, RemoveArgs, RemoveResult, Role.ADMIN, True, "Remove a service."
    ),
    Verb.SERVICES: VerbSpec(
        Verb.SERVICES, ServicesArgs, ServicesResult, Role.VIEWER, False, "Services on the host."
    ),
    Verb.PULL: VerbSpec(Verb.PULL, PullArgs, PullResult, Role.OPERATOR, True, "Pull an image."),
    Verb.IMAGES: VerbSpec(
        Verb.IMAGES, ImagesArgs, ImagesResult, Role.VIEWER, False, "List images."
    ),
    Verb.LOGS: VerbSpec(
        Verb.LOGS, LogsArgs, LogsResult, Role.VIEWER, False, "Logs of a container or service."
    ),
    Verb.CANCEL: VerbSpec(
        Verb.CANCEL, CancelArgs, CancelResult, Role.VIEWER, False, "Stop a logs stream."
    ),
    Verb.STATS: VerbSpec(
        Verb.STATS, StatsArgs, StatsResult, Role.VIEWER, False, "Resource usage snapshot."
    ),
    Verb.INSPECT: VerbSpec(
        Verb.INSPECT, InspectArgs, InspectResult, Role.VIEWER, False, "Inspect a container."
    ),
    Verb.INFO: VerbSpec(Verb.INFO, InfoArgs, InfoResult, Role.VIEWER, False, "Engine details."),
    Verb.EVENTS: VerbSpec(
        Verb.EVENTS, EventsArgs, EventsResult, Role.VIEWER, False, "Recent container events."
    ),
    Verb.START: VerbSpec(
        Verb.START, StartArgs, ContainerActionResult, Role.OPERATOR, True, "Start a container."
    ),
    Verb.STOP: VerbSpec(
        Verb.STOP, StopArgs, ContainerActionResult, Role.OPERATOR, True, "Stop a container."
    ),
    Verb.RESTART: VerbSpec(
        Verb.RESTART,
        RestartArgs,
        ContainerActionResult,
        Role.OPERATOR,
        True,
        "Restart a container.",
    ),
    Verb.RM: VerbSpec(
        Verb.RM, RmArgs, ContainerActionResult, Role.ADMIN, True, "Remove a container."
    ),
    Verb.EXEC: VerbSpec(
        Verb.EXEC, ExecArgs, ExecResult, Role.OPERATOR, True, "Run a command in a container."
    ),
    Verb.RUN: VerbSpec(
        Verb.RUN, RunArgs, ExecResult, Role.OPERATOR, True, "Run a one-off container."
    ),
    Verb.SECRET: VerbSpec(
        Verb.SECRET, SecretArgs, SecretResult, Role.OPERATOR, True, "Store or delete a secret."
    ),
    Verb.SECRETS: VerbSpec(
        Verb.SECRETS, SecretsArgs, SecretsResult, Role.VIEWER, False, "Names of stored secrets."
    ),
    Verb.UPGRADE: VerbSpec(
        Verb.UPGRADE, UpgradeArgs, UpgradeResult, Role.ADMIN, True, "Replace the agent itself."
    ),
}


def required_role(verb: Verb, args: BaseModel) -> Role:
    """The least role allowed to send ``verb`` with these arguments."""
    if isinstance(args, PruneArgs) and PruneKind.VOLUMES in args.kinds:
        return Role.ADMIN
    return VERBS[verb].role

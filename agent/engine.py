"""The seam between the agent and a container engine.

The agent talks to an :class:`Engine`. The real one is
:class:`agent.docker.DockerEngine`; benchmarks and pure-logic tests may supply
an in-memory one. Every method is synchronous and may block: the runtime calls
them in its bounded thread pool with a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from shoal.protocol import (
    ContainerEventInfo,
    ContainerSummary,
    ExecArgs,
    ImageSummary,
    InfoResult,
    LogLine,
    PsArgs,
    RunArgs,
    ServiceSpec,
    StatsResult,
)
from shoal.protocol.service import NetworkSpec

T_co = TypeVar("T_co", covariant=True)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the agent reports about its engine."""

    name: str
    version: str
    api_version: str
    os: str
    kernel: str
    arch: str


@dataclass(frozen=True, slots=True)
class ExecState:
    """A docker exec: still running, its exit code once done, its process id on the host."""

    running: bool
    exit_code: int | None
    pid: int


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    id: str
    name: str
    image_id: str
    state: str
    created: datetime
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    networks: frozenset[str] = frozenset()
    """Names and ids of the networks the container is attached to."""
    volumes: frozenset[str] = frozenset()
    """Names of the volumes the container mounts."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    tags: tuple[str, ...]
    created: datetime
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    shared_size: int = 0
    parent_id: str = ""
    digests: tuple[str, ...] = ()

    @property
    def dangling(self) -> bool:
        return not self.tags

    @property
    def unique_size(self) -> int:
        """Bytes only this image holds (what removing it frees)."""
        return max(0, self.size - max(0, self.shared_size))


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    name: str
    created: datetime | None
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    ref_count: int = 0

    @property
    def anonymous(self) -> bool:
        """Anonymous volumes: labelled so by API 1.42+, or a 64-hex name on older engines."""
        if "com.docker.volume.anonymous" in self.labels:
            return True
        return len(self.name) == 64 and all(c in "0123456789abcdef" for c in self.name)


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    id: str
    name: str
    driver: str
    created: datetime | None
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.name in ("bridge", "host", "none") or self.driver in ("host", "null")


@dataclass(frozen=True, slots=True)
class BuildCacheRecord:
    id: str
    size: int
    in_use: bool
    shared: bool
    created: datetime | None
    last_used: datetime | None = None


@dataclass(frozen=True, slots=True)
class DiskSnapshot:
    """Everything prune and df decide on, read from the engine in one go."""

    api_version: str
    containers: list[ContainerRecord]
    images: list[ImageRecord]
    volumes: list[VolumeRecord]
    networks: list[NetworkRecord]
    build_cache: list[BuildCacheRecord]
    layers_size: int = 0
    """Bytes of all image layers on disk, shared layers counted once."""


PullProgress = Callable[[int, int, str], None]
"""Called with (bytes done, bytes total, status line) while a pull runs (from its thread)."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str
    digests: tuple[str, ...]
    architecture: str
    variant: str
    os: str


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    name: str
    status: str
    """created, running, exited, …"""
    health: str
    """healthy, unhealthy, starting, or '' without a healthcheck."""
    exit_code: int
    restart_count: int
    image_id: str
    labels: dict[str, str]
    started_at: str

    @property
    def running(self) -> bool:
        return self.status == "running"


class Stream(Protocol[T_co]):
    """A blocking stream from the engine (logs, events): iterate it in a thread of its own;
    :meth:`close` (from any thread) ends the iteration."""

    def __iter__(self) -> Iterator[T_co]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ContainerEventRecord:
    """One container event of the engine, with its time in nanoseconds since the epoch."""

    time_nano: int
    info: ContainerEventInfo


class Engine(Protocol):
    def info(self) -> EngineInfo:
        """Engine details. Raises DockerUnavailable when the engine cannot be reached."""
        ...

    def ping(self) -> None:
        """Cheap liveness probe. Raises DockerUnavailable when unreachable."""
        ...

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]: ...

    def disk_snapshot(self) -> DiskSnapshot:
        """Containers, images, volumes, networks and build cache with their sizes."""
        ...

    def remove_container(
        self, container_id: str, *, force: bool = False, volumes: bool = False
    ) -> None:
        """Remove a container as ``docker rm`` does (a running one only with ``force``)."""
        ...

    def remove_image(self, ref: str) -> None:
        """Remove an image by id, or untag one tag of it."""
        ...

    def remove_volume(self, name: str) -> None: ...

    def remove_network(self, network_id: str) -> None: ...

    def prune_build_cache(self, until: float | None) -> tuple[int, int]:
        """Remove unused build cache; returns (records removed, bytes reclaimed)."""
        ...

    # --- services ---------------------------------------------------------------------

    def create_service_container(
        self,
        spec: ServiceSpec,
        name: str,
        labels: dict[str, str],
        files: Mapping[str, str] | None = None,
    ) -> str:
        """Create (not start) a revision's container; ``files``: target -> host file (ro)."""
        ...

    def ensure_network(self, spec: NetworkSpec) -> str:
        """Make a compose network exist as defined: ``created``, ``recreated`` or ``reused``."""
        ...

    def rename_container(self, container_id: str, name: str) -> None: ...

    def exec_output(
        self, container_id: str, args: ExecArgs
    ) -> tuple[str, Stream[tuple[str, bytes]]]:
        """Start a command in a container: the exec id and its output stream."""
        ...

    def exec_state(self, exec_id: str) -> ExecState: ...

    def run_output(
        self, args: RunArgs, name: str, labels: dict[str, str]
    ) -> tuple[str, Stream[tuple[str, bytes]]]:
        """Create and start a one-off container: its id and its output stream."""
        ...

    def wait_exit(self, container_id: str, timeout: float) -> int | None: ...

    def kill_container(self, container_id: str) -> None: ...

    def start_container(self, container_id: str) -> None: ...

    def stop_container(self, container_id: str, timeout: int) -> None: ...

    def container_state(self, container_id: str) -> ContainerState: ...

    def container_logs(self, container_id: str, tail: int) -> list[str]: ...

    def service_containers(self, service: str | None) -> list[ContainerState]:
        """Containers labelled as belonging to a service (or to any service)."""
        ...

    def image_info(self, ref: str) -> ImageInfo | None: ...

    def pull_image(self, ref: str, progress: PullProgress) -> ImageInfo:
        """Pull with the host's credentials; ``progress`` is called from the engine thread."""
        ...

    def close(self) -> None: ...

    # --- everyday commands -----------------------------------------------------------

    def list_images(self, all_images: bool) -> list[ImageSummary]:
        """Images with their architecture (intermediate ones too with ``all_images``)."""
        ...

    def read_logs(self, container_id: str, tail: int, since: float | None) -> list[LogLine]:
        """The last ``tail`` lines (of those after ``since``, a UNIX time), oldest first."""
        ...

    def follow_logs(self, container_id: str, tail: int, since: float | None) -> Stream[LogLine]:
        """The last ``tail`` lines, then every new line until closed or the container stops."""
        ...

    def container_stats(self) -> StatsResult:
        """One sample of every running container, and the host's totals."""
        ...

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """The engine's inspect document of a container."""
        ...

    def engine_details(self) -> InfoResult: ...

    def restart_container(self, container_id: str, timeout: int) -> None: ...

    def container_events(self, since: float | None) -> Stream[ContainerEventRecord]:
        """Container events from ``since`` (a UNIX time; None: from now on), until closed."""
        ...

    def past_container_events(self, since: float, until: float) -> list[ContainerEventRecord]:
        """Container events between two UNIX times that the engine still holds."""
        ...

    def start_upgrade_helper(
        self, own_id: str, image: str, *, deadline: float, version: str | None
    ) -> str:
        """Start the helper container that replaces the agent's container; its id."""
        ...

"""An in-memory container engine for the fan-out benchmark. A SIMULATION.

:class:`SimEngine` implements :class:`agent.engine.Engine`, the seam the agent
owns between its runtime and a container engine. It serves a few canned
containers and never touches Docker, so that thousands of real agent runtimes
(NATS connection, subscriptions, heartbeats, request validation, replies) fit on
one machine. It is used by ``bench/`` only: the real-engine benchmarks run the
agent against real dockerd engines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn

from shoal.agent.engine import ContainerState, DiskSnapshot, EngineInfo
from shoal.protocol import ContainerSummary, DockerError, PsArgs

SIM_VERSION = "sim-0.0"
CREATED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
IMAGES = ("shoal-sim/web:1.4.2", "shoal-sim/worker:2.0.1", "busybox:1.36")


def canned_containers(host_id: str, count: int, running: int) -> list[ContainerSummary]:
    """``count`` containers for one host, the first ``running`` of them running."""
    containers = []
    for index in range(count):
        up = index < running
        name = f"{host_id}-app-{index}"
        containers.append(
            ContainerSummary(
                id=(name.encode().hex() + "0" * 64)[:64],
                name=name,
                image=IMAGES[index % len(IMAGES)],
                image_id="sha256:" + f"{index:02x}" * 32,
                command="/bin/app --serve",
                created=CREATED,
                state="running" if up else "exited",
                status="Up 3 days" if up else "Exited (0) 2 days ago",
                labels={"app": f"app-{index}", "tier": "web" if index % 2 == 0 else "backend"},
            )
        )
    return containers


class IdleStream:
    """An engine stream with nothing to say (an idle engine's events): it blocks until
    closed, in the thread the agent gives it, as a real engine's event stream does."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        self._closed.wait()
        return iter(())

    def close(self) -> None:
        self._closed.set()


class SimEngine:
    """Serves canned containers for one simulated host.

    What the agent does on its own (start-up probe, heartbeats, the container
    events watch, service recovery) and what ``ps`` asks for are simulated; any
    other engine call fails with a ``docker_error`` saying it is not simulated.
    """

    def __init__(self, host_id: str, *, containers: int = 5, running: int = 3) -> None:
        self.host_id = host_id
        self.containers = canned_containers(host_id, containers, running)
        self._info = EngineInfo(
            name=host_id,
            version=SIM_VERSION,
            api_version="1.41",
            os="linux",
            kernel="sim",
            arch="x86_64",
        )

    def info(self) -> EngineInfo:
        return self._info

    def ping(self) -> None:
        return None

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]:
        return [c for c in self.containers if _selected(c, args)]

    def disk_snapshot(self) -> DiskSnapshot:
        return DiskSnapshot(
            api_version="1.41", containers=[], images=[], volumes=[], networks=[], build_cache=[]
        )

    def remove_container(
        self, container_id: str, *, force: bool = False, volumes: bool = False
    ) -> None:
        return None

    def remove_image(self, ref: str) -> None:
        return None

    def remove_volume(self, name: str) -> None:
        return None

    def remove_network(self, network_id: str) -> None:
        return None

    def prune_build_cache(self, until: float | None) -> tuple[int, int]:
        return 0, 0

    def service_containers(self, service: str | None) -> list[ContainerState]:
        return []  # no Shoal services on a simulated host

    def container_events(self, since: float | None) -> IdleStream:
        return IdleStream()

    def past_container_events(self, since: float, until: float) -> list[Any]:
        return []

    def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        """Every other engine operation: refused, clearly, as not simulated."""
        if name.startswith("_"):
            raise AttributeError(name)

        def not_simulated(*args: object, **kwargs: object) -> NoReturn:
            raise DockerError(f"{name} is not simulated by the benchmark's engine")

        return not_simulated


def _selected(container: ContainerSummary, args: PsArgs) -> bool:
    """Docker's ps filters, approximated (all, name, label, status, image)."""
    if not args.all and container.state != "running":
        return False
    if args.name and not any(n in container.name for n in args.name):
        return False
    for spec in args.label:
        key, sep, value = spec.partition("=")
        if key not in container.labels or (sep and container.labels[key] != value):
            return False
    if args.status and container.state not in args.status:
        return False
    return not args.image or container.image in args.image

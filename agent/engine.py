"""The seam between the agent and a container engine.

The agent talks to an :class:`Engine`. The real one is
:class:`agent.docker.DockerEngine`; benchmarks and pure-logic tests may supply
an in-memory one. Every method is synchronous and may block: the runtime calls
them in its bounded thread pool with a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from protocol import ContainerSummary, PsArgs


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the agent reports about its engine."""

    name: str
    version: str
    api_version: str
    os: str
    kernel: str
    arch: str


class Engine(Protocol):
    def info(self) -> EngineInfo:
        """Engine details. Raises DockerUnavailable when the engine cannot be reached."""
        ...

    def ping(self) -> None:
        """Cheap liveness probe. Raises DockerUnavailable when unreachable."""
        ...

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]: ...

    def close(self) -> None: ...

"""Verbs and their typed arguments and results."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from protocol.envelope import HostId

RESERVED_LABELS = frozenset({"host", "arch", "variant", "os", "kernel"})
"""Fact names that are selectable like labels, so agents may not set them as labels."""


class Verb(StrEnum):
    PING = "ping"
    PS = "ps"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --- ping / facts -------------------------------------------------------------


class DockerFacts(_Result):
    """What the agent knows of its Docker engine."""

    reachable: bool
    version: str | None = None
    api_version: str | None = None
    error: str | None = Field(default=None, description="Why the engine is unreachable.")


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


# --- the verb table -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerbSpec:
    verb: Verb
    args: type[_Args]
    result: type[_Result]
    role: Role
    mutating: bool
    summary: str


VERBS: dict[Verb, VerbSpec] = {
    Verb.PING: VerbSpec(Verb.PING, PingArgs, AgentFacts, Role.VIEWER, False, "The agent's facts."),
    Verb.PS: VerbSpec(Verb.PS, PsArgs, PsResult, Role.VIEWER, False, "List containers."),
}


# --- events -------------------------------------------------------------------


class EventKind(StrEnum):
    STARTED = "started"
    STOPPING = "stopping"
    ENGINE_LOST = "engine_lost"
    ENGINE_REGAINED = "engine_regained"


class AgentEvent(_Result):
    """An agent lifecycle event, published on ``<prefix>.events.<host>.<kind>``."""

    host_id: HostId
    instance: str
    kind: str
    at: AwareDatetime
    message: str = ""

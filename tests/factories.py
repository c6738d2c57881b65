"""Protocol documents for tests that stand in for agents at the wire level."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shoal.protocol import AgentFacts, DockerFacts, utcnow


def agent_facts(host: str, *, at: datetime | None = None, **fields: Any) -> AgentFacts:
    """An amd64 Linux agent's facts, as its heartbeat carries them; ``fields`` override."""
    when = at or utcnow()
    values: dict[str, Any] = {
        "host_id": host,
        "instance": "test",
        "arch": "amd64",
        "os": "linux",
        "kernel": "test",
        "docker": DockerFacts(reachable=True),
        "agent_version": "0",
        "protocol_version": 1,
        "started_at": when,
        "sent_at": when,
        "heartbeat_interval": 600,
        **fields,
    }
    return AgentFacts(**values)


def heartbeat(host: str, **fields: Any) -> bytes:
    """A heartbeat message for ``host``, as the agent publishes it."""
    return agent_facts(host, **fields).model_dump_json().encode()

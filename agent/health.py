"""The agent's health file, for container HEALTHCHECKs and service monitors.

The agent rewrites it on every heartbeat; ``shoal-agent --check-health`` reads
it and exits 0 only if the agent is connected to NATS and wrote it recently.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ValidationError

from shoal.protocol import utcnow


class Health(BaseModel):
    host_id: str
    connected: bool
    docker_reachable: bool
    status: str
    updated_at: AwareDatetime
    heartbeat_interval: float


def write_health(path: Path, health: Health) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(health.model_dump_json())
    tmp.replace(path)


def check_health(path: Path) -> tuple[bool, str]:
    """(healthy, one line why)."""
    try:
        health = Health.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return False, f"no health file at {path} (agent not started?)"
    except (OSError, ValidationError) as exc:
        return False, f"unreadable health file {path}: {exc}"
    age = utcnow() - health.updated_at
    if health.status != "online":
        return False, f"agent {health.host_id} is {health.status}"
    if age > timedelta(seconds=3 * health.heartbeat_interval + 5):
        return False, f"agent {health.host_id} last reported {age.total_seconds():.0f}s ago"
    if not health.connected:
        return False, f"agent {health.host_id} is not connected to NATS"
    docker = "reachable" if health.docker_reachable else "UNREACHABLE"
    return True, f"agent {health.host_id} connected; Docker {docker}"

"""Networks: records and removal."""

from __future__ import annotations

from typing import Any

import docker

from ..engine import NetworkRecord
from .convert import engine_time
from .errors import translate_docker_errors


def network_record(raw: dict[str, Any]) -> NetworkRecord:
    return NetworkRecord(
        id=raw["Id"],
        name=raw.get("Name", ""),
        driver=raw.get("Driver", ""),
        created=engine_time(raw.get("Created")),
        labels=raw.get("Labels") or {},
    )


def remove_network(client: docker.DockerClient, network_id: str) -> None:
    with translate_docker_errors(f"remove network {network_id[:12]}"):
        client.api.remove_network(network_id)

"""Volumes: disk-usage records and removal."""

from __future__ import annotations

from typing import Any

import docker

from ..engine import VolumeRecord
from .convert import engine_time
from .errors import translate_docker_errors


def volume_record(raw: dict[str, Any]) -> VolumeRecord:
    usage = raw.get("UsageData") or {}
    return VolumeRecord(
        name=raw["Name"],
        created=engine_time(raw.get("CreatedAt")),
        labels=raw.get("Labels") or {},
        size=max(0, int(usage.get("Size") or 0)),
        ref_count=max(0, int(usage.get("RefCount") or 0)),
    )


def remove_volume(client: docker.DockerClient, name: str) -> None:
    with translate_docker_errors(f"remove volume {name}"):
        client.api.remove_volume(name, force=False)

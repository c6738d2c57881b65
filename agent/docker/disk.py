"""Disk-usage snapshot and removals: images, volumes, networks, build cache."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import docker

from ..engine import (
    BuildCacheRecord,
    ContainerRecord,
    DiskSnapshot,
    ImageRecord,
    NetworkRecord,
    VolumeRecord,
)
from .errors import translate_docker_errors

NO_TAG = "<none>:<none>"


def _time(value: Any) -> datetime | None:
    """Engine timestamps: Unix seconds, or RFC 3339 (nanoseconds allowed)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    text = str(value)
    if text.startswith("0001-01-01"):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _container(raw: dict[str, Any]) -> ContainerRecord:
    names = raw.get("Names") or []
    networks = raw.get("NetworkSettings", {}).get("Networks") or {}
    net_refs = set(networks)
    net_refs.update(n.get("NetworkID", "") for n in networks.values() if n.get("NetworkID"))
    mode = (raw.get("HostConfig") or {}).get("NetworkMode", "")
    if mode and mode not in ("default",):
        net_refs.add(mode)
    volumes = {m["Name"] for m in raw.get("Mounts") or [] if m.get("Type") == "volume"}
    return ContainerRecord(
        id=raw["Id"],
        name=names[0].lstrip("/") if names else raw["Id"][:12],
        image_id=raw.get("ImageID", ""),
        state=raw.get("State", ""),
        created=_time(raw.get("Created")) or datetime.fromtimestamp(0, UTC),
        labels=raw.get("Labels") or {},
        size=int(raw.get("SizeRw") or 0),
        networks=frozenset(net_refs),
        volumes=frozenset(volumes),
    )


def _image(raw: dict[str, Any]) -> ImageRecord:
    tags = tuple(t for t in raw.get("RepoTags") or [] if t != NO_TAG)
    return ImageRecord(
        id=raw["Id"],
        tags=tags,
        created=_time(raw.get("Created")) or datetime.fromtimestamp(0, UTC),
        labels=raw.get("Labels") or {},
        size=int(raw.get("Size") or 0),
        shared_size=int(raw.get("SharedSize") or 0),
        parent_id=raw.get("ParentId") or "",
        digests=tuple(d for d in raw.get("RepoDigests") or [] if not d.startswith("<none>")),
    )


def _volume(raw: dict[str, Any]) -> VolumeRecord:
    usage = raw.get("UsageData") or {}
    return VolumeRecord(
        name=raw["Name"],
        created=_time(raw.get("CreatedAt")),
        labels=raw.get("Labels") or {},
        size=max(0, int(usage.get("Size") or 0)),
        ref_count=max(0, int(usage.get("RefCount") or 0)),
    )


def _network(raw: dict[str, Any]) -> NetworkRecord:
    return NetworkRecord(
        id=raw["Id"],
        name=raw.get("Name", ""),
        driver=raw.get("Driver", ""),
        created=_time(raw.get("Created")),
        labels=raw.get("Labels") or {},
    )


def _build_cache(raw: dict[str, Any]) -> BuildCacheRecord:
    return BuildCacheRecord(
        id=raw.get("ID", ""),
        size=int(raw.get("Size") or 0),
        in_use=bool(raw.get("InUse")),
        shared=bool(raw.get("Shared")),
        created=_time(raw.get("CreatedAt")),
        last_used=_time(raw.get("LastUsedAt")),
    )


def disk_snapshot(client: docker.DockerClient) -> DiskSnapshot:
    """``GET /system/df`` plus ``GET /networks``: two calls for everything."""
    with translate_docker_errors("disk usage"):
        df = client.api.df()
        networks = client.api.networks()
    return DiskSnapshot(
        api_version=str(client.api.api_version),
        containers=[_container(c) for c in df.get("Containers") or []],
        images=[_image(i) for i in df.get("Images") or []],
        volumes=[_volume(v) for v in df.get("Volumes") or []],
        networks=[_network(n) for n in networks or []],
        build_cache=[_build_cache(b) for b in df.get("BuildCache") or []],
        layers_size=int(df.get("LayersSize") or 0),
    )


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    with translate_docker_errors(f"remove container {container_id[:12]}"):
        client.api.remove_container(container_id, v=False, force=False)


def remove_image(client: docker.DockerClient, ref: str) -> None:
    with translate_docker_errors(f"remove image {ref}"):
        client.api.remove_image(ref, force=False, noprune=False)


def remove_volume(client: docker.DockerClient, name: str) -> None:
    with translate_docker_errors(f"remove volume {name}"):
        client.api.remove_volume(name, force=False)


def remove_network(client: docker.DockerClient, network_id: str) -> None:
    with translate_docker_errors(f"remove network {network_id[:12]}"):
        client.api.remove_network(network_id)


def prune_build_cache(client: docker.DockerClient, until: float | None) -> tuple[int, int]:
    filters = {"until": f"{int(until)}s"} if until else None
    with translate_docker_errors("prune build cache"):
        result = client.api.prune_builds(filters=filters, all=True)
    return len(result.get("CachesDeleted") or []), int(result.get("SpaceReclaimed") or 0)

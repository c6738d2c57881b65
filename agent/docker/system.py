"""Engine-wide calls: info, ping, disk usage, build cache, container events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker

from shoal.protocol import CONTAINER_ACTIONS, SERVICE_LABEL, ContainerEventInfo, InfoResult

from ..engine import BuildCacheRecord, ContainerEventRecord, DiskSnapshot, EngineInfo
from .containers import container_record
from .convert import engine_time
from .errors import translate_docker_errors
from .images import image_record
from .networks import network_record
from .volumes import volume_record


def engine_info(client: docker.DockerClient) -> EngineInfo:
    with translate_docker_errors("engine info"):
        info = client.api.info()
        version = client.api.version()
    return EngineInfo(
        name=str(info.get("Name", "")),
        version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        os=str(info.get("OSType", "linux")),
        kernel=str(info.get("KernelVersion", "")),
        arch=str(info.get("Architecture", "")),
    )


def ping_engine(client: docker.DockerClient) -> None:
    with translate_docker_errors("ping"):
        client.api.ping()


def engine_details(client: docker.DockerClient) -> InfoResult:
    with translate_docker_errors("engine info"):
        info = client.api.info()
        version = client.api.version()
    return InfoResult(
        name=str(info.get("Name") or ""),
        server_version=str(info.get("ServerVersion") or version.get("Version") or ""),
        api_version=str(version.get("ApiVersion") or ""),
        operating_system=str(info.get("OperatingSystem") or ""),
        os_type=str(info.get("OSType") or ""),
        kernel=str(info.get("KernelVersion") or ""),
        architecture=str(info.get("Architecture") or ""),
        cpus=int(info.get("NCPU") or 0),
        memory_total=int(info.get("MemTotal") or 0),
        containers=int(info.get("Containers") or 0),
        containers_running=int(info.get("ContainersRunning") or 0),
        containers_paused=int(info.get("ContainersPaused") or 0),
        containers_stopped=int(info.get("ContainersStopped") or 0),
        images=int(info.get("Images") or 0),
        storage_driver=str(info.get("Driver") or ""),
        logging_driver=str(info.get("LoggingDriver") or ""),
        cgroup_driver=str(info.get("CgroupDriver") or ""),
        cgroup_version=str(info.get("CgroupVersion") or ""),
        docker_root_dir=str(info.get("DockerRootDir") or ""),
        default_runtime=str(info.get("DefaultRuntime") or ""),
        runtimes=sorted(info.get("Runtimes") or {}),
        security_options=[str(o) for o in info.get("SecurityOptions") or []],
        live_restore=bool(info.get("LiveRestoreEnabled")),
        system_time=str(info.get("SystemTime") or ""),
        warnings=[str(w) for w in info.get("Warnings") or []],
    )


def _build_cache(raw: dict[str, Any]) -> BuildCacheRecord:
    return BuildCacheRecord(
        id=raw.get("ID", ""),
        size=int(raw.get("Size") or 0),
        in_use=bool(raw.get("InUse")),
        shared=bool(raw.get("Shared")),
        created=engine_time(raw.get("CreatedAt")),
        last_used=engine_time(raw.get("LastUsedAt")),
    )


def disk_snapshot(client: docker.DockerClient) -> DiskSnapshot:
    """``GET /system/df`` plus ``GET /networks``: two calls for everything."""
    with translate_docker_errors("disk usage"):
        df = client.api.df()
        networks = client.api.networks()
    return DiskSnapshot(
        api_version=str(client.api.api_version),
        containers=[container_record(c) for c in df.get("Containers") or []],
        images=[image_record(i) for i in df.get("Images") or []],
        volumes=[volume_record(v) for v in df.get("Volumes") or []],
        networks=[network_record(n) for n in networks or []],
        build_cache=[_build_cache(b) for b in df.get("BuildCache") or []],
        layers_size=int(df.get("LayersSize") or 0),
    )


def prune_build_cache(client: docker.DockerClient, until: float | None) -> tuple[int, int]:
    filters = {"until": f"{int(until)}s"} if until else None
    with translate_docker_errors("prune build cache"):
        result = client.api.prune_builds(filters=filters, all=True)
    return len(result.get("CachesDeleted") or []), int(result.get("SpaceReclaimed") or 0)


# --- container events ---------------------------------------------------------------

_EVENT_FILTERS = {"type": "container"}


def _event_record(raw: dict[str, Any]) -> ContainerEventRecord | None:
    action = str(raw.get("Action") or raw.get("status") or "")
    if action.split(":", 1)[0] not in CONTAINER_ACTIONS:
        return None
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    exit_code = attributes.get("exitCode")
    time_nano = raw.get("timeNano") or int(raw.get("time") or 0) * 1_000_000_000
    return ContainerEventRecord(
        time_nano=int(time_nano),
        info=ContainerEventInfo(
            action=action,
            id=str(actor.get("ID") or raw.get("id") or ""),
            name=str(attributes.get("name") or ""),
            image=str(attributes.get("image") or raw.get("from") or ""),
            service=str(attributes.get(SERVICE_LABEL) or ""),
            exit_code=int(str(exit_code)) if str(exit_code or "").lstrip("-").isdigit() else None,
        ),
    )


class EventStream:
    """The engine's container events, as records, until closed."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[ContainerEventRecord]:
        with translate_docker_errors("container events"):
            for raw in self._stream:
                record = _event_record(raw) if isinstance(raw, dict) else None
                if record is not None:
                    yield record

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or the engine went away
            self._stream.close()


def container_events(client: docker.DockerClient, since: float | None) -> EventStream:
    with translate_docker_errors("container events"):
        stream = client.api.events(since=since, filters=_EVENT_FILTERS, decode=True)
    return EventStream(stream)


def past_container_events(
    client: docker.DockerClient, since: float, until: float
) -> list[ContainerEventRecord]:
    records: list[ContainerEventRecord] = []
    if until <= since:
        return records
    with translate_docker_errors("container events"):
        for raw in client.api.events(since=since, until=until, filters=_EVENT_FILTERS, decode=True):
            record = _event_record(raw) if isinstance(raw, dict) else None
            if record is not None:
                records.append(record)
    return records

"""Everyday operations: images, logs, stats, inspect, info, container actions and events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from shoal.protocol import (
    CONTAINER_ACTIONS,
    SERVICE_LABEL,
    ContainerEventInfo,
    ContainerStats,
    HostStats,
    ImageSummary,
    InfoResult,
    LogLine,
    StatsResult,
    parse_log_line,
)

from ..engine import ContainerEventRecord
from .errors import translate_docker_errors

STATS_WORKERS = 8
"""Containers sampled at once: each sample takes the engine about a second."""

# --- images -------------------------------------------------------------------------------


def list_images(client: docker.DockerClient, all_images: bool) -> list[ImageSummary]:
    """``GET /images/json``, then one inspect per image for its platform."""
    images = []
    with translate_docker_errors("list images"):
        raw = client.api.images(all=all_images)
        for item in raw:
            try:
                details = client.api.inspect_image(item["Id"])
            except docker.errors.NotFound:
                continue  # removed since it was listed
            tags = [t for t in item.get("RepoTags") or [] if t != "<none>:<none>"]
            digests = [d for d in item.get("RepoDigests") or [] if d != "<none>@<none>"]
            images.append(
                ImageSummary(
                    id=item["Id"],
                    repo_tags=tags,
                    repo_digests=digests,
                    created=datetime.fromtimestamp(item.get("Created") or 0, UTC),
                    size=max(0, int(item.get("Size") or 0)),
                    architecture=str(details.get("Architecture") or ""),
                    variant=str(details.get("Variant") or ""),
                    os=str(details.get("Os") or ""),
                )
            )
    return images


# --- logs ---------------------------------------------------------------------------------


def _decode(chunk: bytes | str) -> str:
    return chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else str(chunk)


def read_logs(
    client: docker.DockerClient, container_id: str, tail: int, since: float | None
) -> list[LogLine]:
    with translate_docker_errors(f"logs of container {container_id[:12]}"):
        raw = client.api.logs(
            container_id, stdout=True, stderr=True, timestamps=True, tail=tail, since=since
        )
    text = _decode(raw)
    return [parse_log_line(line) for line in text.splitlines()]


class LineStream:
    """Log lines of a followed container, split from the engine's chunks."""

    def __init__(self, stream: Any, container_id: str) -> None:
        self._stream = stream
        self._action = f"follow logs of container {container_id[:12]}"

    def __iter__(self) -> Iterator[LogLine]:
        pending = ""
        with translate_docker_errors(self._action):
            for chunk in self._stream:
                pending += _decode(chunk)
                *complete, pending = pending.split("\n")
                for line in complete:
                    yield parse_log_line(line.removesuffix("\r"))
        if pending:
            yield parse_log_line(pending)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or the engine went away
            self._stream.close()


def follow_logs(
    client: docker.DockerClient, container_id: str, tail: int, since: float | None
) -> LineStream:
    with translate_docker_errors(f"follow logs of container {container_id[:12]}"):
        stream = client.api.logs(
            container_id,
            stdout=True,
            stderr=True,
            timestamps=True,
            tail=tail,
            since=since,
            stream=True,
            follow=True,
        )
    return LineStream(stream, container_id)


# --- stats --------------------------------------------------------------------------------


def _cpu_percent(raw: dict[str, Any]) -> float:
    """As the docker CLI computes it: 100 is one CPU fully used."""
    cpu, pre = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    usage, pre_usage = cpu.get("cpu_usage") or {}, pre.get("cpu_usage") or {}
    cpu_delta = (usage.get("total_usage") or 0) - (pre_usage.get("total_usage") or 0)
    system_delta = (cpu.get("system_cpu_usage") or 0) - (pre.get("system_cpu_usage") or 0)
    online = cpu.get("online_cpus") or len(usage.get("percpu_usage") or ()) or 1
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return float(cpu_delta) / float(system_delta) * online * 100.0


def _memory_usage(memory: dict[str, Any]) -> int:
    """Usage without the inactive page cache, as the docker CLI shows it (cgroup v1 and v2)."""
    usage = int(memory.get("usage") or 0)
    stats = memory.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):
        inactive = stats.get(key)
        if inactive is not None and inactive < usage:
            return usage - int(inactive)
    return usage


def _block_io(raw: dict[str, Any]) -> tuple[int, int]:
    read = write = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value") or 0)
        elif op == "write":
            write += int(entry.get("value") or 0)
    return read, write


def _sample(client: docker.DockerClient, item: dict[str, Any]) -> ContainerStats | None:
    names = item.get("Names") or []
    name = names[0].lstrip("/") if names else item["Id"][:12]
    with translate_docker_errors(f"stats of container {name}"):
        try:
            raw = client.api.stats(item["Id"], stream=False)
        except (docker.errors.NotFound, docker.errors.APIError) as exc:
            if isinstance(exc, docker.errors.NotFound) or exc.status_code == 409:
                return None  # gone or stopped since it was listed
            raise
    memory = raw.get("memory_stats") or {}
    usage, limit = _memory_usage(memory), int(memory.get("limit") or 0)
    networks = (raw.get("networks") or {}).values()
    read, write = _block_io(raw)
    return ContainerStats(
        id=item["Id"],
        name=name,
        service=(item.get("Labels") or {}).get(SERVICE_LABEL, ""),
        cpu_percent=round(_cpu_percent(raw), 2),
        memory_usage=usage,
        memory_limit=limit,
        memory_percent=round(100.0 * usage / limit, 2) if limit else 0.0,
        net_rx=sum(int(n.get("rx_bytes") or 0) for n in networks),
        net_tx=sum(int(n.get("tx_bytes") or 0) for n in networks),
        block_read=read,
        block_write=write,
        pids=int((raw.get("pids_stats") or {}).get("current") or 0),
    )


def container_stats(client: docker.DockerClient) -> StatsResult:
    """One sample per running container (sampled in parallel), and the host's totals."""
    with translate_docker_errors("stats"):
        running = client.api.containers(filters={"status": "running"})
        info = client.api.info()
    samples: list[ContainerStats] = []
    if running:
        with ThreadPoolExecutor(min(STATS_WORKERS, len(running)), "shoal-stats") as pool:
            samples = [s for s in pool.map(lambda c: _sample(client, c), running) if s]
    samples.sort(key=lambda s: s.name)
    host = HostStats(
        containers=len(samples),
        cpus=int(info.get("NCPU") or 0),
        memory_total=int(info.get("MemTotal") or 0),
        cpu_percent=round(sum(s.cpu_percent for s in samples), 2),
        memory_usage=sum(s.memory_usage for s in samples),
        net_rx=sum(s.net_rx for s in samples),
        net_tx=sum(s.net_tx for s in samples),
        block_read=sum(s.block_read for s in samples),
        block_write=sum(s.block_write for s in samples),
        pids=sum(s.pids for s in samples),
    )
    return StatsResult(host=host, containers=samples)


# --- inspect and info ---------------------------------------------------------------------


def inspect_container(client: docker.DockerClient, container_id: str) -> dict[str, Any]:
    with translate_docker_errors(f"inspect container {container_id[:12]}"):
        raw: dict[str, Any] = client.api.inspect_container(container_id)
    return raw


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


# --- container actions --------------------------------------------------------------------


def restart_container(client: docker.DockerClient, container_id: str, timeout: int) -> None:
    with translate_docker_errors(f"restart container {container_id[:12]}"):
        client.api.restart(container_id, timeout=timeout)


def delete_container(
    client: docker.DockerClient, container_id: str, *, force: bool, volumes: bool
) -> None:
    with translate_docker_errors(f"remove container {container_id[:12]}"):
        client.api.remove_container(container_id, v=volumes, force=force)


# --- events -------------------------------------------------------------------------------

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

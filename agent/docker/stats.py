"""Container stats: one sample of every running container, and the host's totals."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors

from shoal.protocol import SERVICE_LABEL, ContainerStats, HostStats, StatsResult

from .errors import is_status, translate_docker_errors

STATS_WORKERS = 8
"""Containers sampled at once: each sample takes the engine about a second."""


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
        except docker.errors.APIError as exc:
            if is_status(exc, 404, 409):
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

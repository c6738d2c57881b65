"""Service containers and image pulls: the Docker calls a deploy needs."""

from __future__ import annotations

from typing import Any

import docker
import docker.errors
import docker.types

from shoal.protocol import SERVICE_LABEL, DockerError, ServiceSpec

from ..engine import ContainerState, ImageInfo, PullProgress
from .errors import translate_docker_errors


def _nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def create_service_container(
    client: docker.DockerClient, spec: ServiceSpec, name: str, labels: dict[str, str]
) -> str:
    """Create (not start) the container for one revision of a service."""
    api = client.api
    port_bindings: dict[str, Any] = {}
    exposed: list[tuple[int, str]] = []
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        exposed.append((port.container_port, port.protocol))
        binding = (port.host_ip, port.host_port) if port.host_ip else port.host_port
        port_bindings.setdefault(key, []).append(binding)
    mounts = [
        docker.types.Mount(v.target, v.source, type=v.type, read_only=v.read_only)
        for v in spec.volumes
    ]
    host_config = api.create_host_config(
        port_bindings=port_bindings or None,
        mounts=mounts or None,
        restart_policy={"Name": spec.restart} if spec.restart and spec.restart != "no" else None,
        network_mode=spec.network_mode,
        mem_limit=spec.mem_limit,
        nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
        privileged=spec.privileged,
        pid_mode=spec.pid,
        ipc_mode=spec.ipc,
        devices=list(spec.devices) or None,
        cap_add=list(spec.cap_add) or None,
        cap_drop=list(spec.cap_drop) or None,
        security_opt=list(spec.security_opt) or None,
    )
    healthcheck = None
    if spec.healthcheck is not None:
        h = spec.healthcheck
        healthcheck = docker.types.Healthcheck(
            test=list(h.test),
            interval=_nanos(h.interval),
            timeout=_nanos(h.timeout),
            retries=h.retries,
            start_period=_nanos(h.start_period),
        )
    with translate_docker_errors(f"create container {name}"):
        created = api.create_container(
            image=spec.image,
            command=list(spec.command) if spec.command is not None else None,
            entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
            environment=dict(spec.environment) or None,
            user=spec.user,
            working_dir=spec.working_dir,
            labels={**spec.labels, **labels},
            ports=exposed or None,
            host_config=host_config,
            healthcheck=healthcheck,
            name=name,
            stop_signal=spec.stop_signal,
            stop_timeout=int(spec.stop_grace_period) if spec.stop_grace_period else None,
        )
    return str(created["Id"])


def start_container(client: docker.DockerClient, container_id: str) -> None:
    with translate_docker_errors(f"start container {container_id[:12]}"):
        client.api.start(container_id)


def stop_container(client: docker.DockerClient, container_id: str, timeout: int) -> None:
    with translate_docker_errors(f"stop container {container_id[:12]}"):
        client.api.stop(container_id, timeout=timeout)


def discard_container(client: docker.DockerClient, container_id: str) -> None:
    """Remove a container whatever its state (its anonymous volumes too)."""
    with translate_docker_errors(f"remove container {container_id[:12]}"):
        client.api.remove_container(container_id, v=True, force=True)


def container_state(client: docker.DockerClient, container_id: str) -> ContainerState:
    with translate_docker_errors(f"inspect container {container_id[:12]}"):
        raw = client.api.inspect_container(container_id)
    state = raw.get("State") or {}
    health = (state.get("Health") or {}).get("Status", "")
    return ContainerState(
        id=raw["Id"],
        name=str(raw.get("Name", "")).lstrip("/"),
        status=state.get("Status", ""),
        health=health,
        exit_code=int(state.get("ExitCode") or 0),
        restart_count=int(raw.get("RestartCount") or 0),
        image_id=raw.get("Image", ""),
        labels=(raw.get("Config") or {}).get("Labels") or {},
        started_at=state.get("StartedAt", ""),
    )


def container_logs(client: docker.DockerClient, container_id: str, tail: int) -> list[str]:
    with translate_docker_errors(f"logs of container {container_id[:12]}"):
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=tail)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.splitlines()[-tail:]


def service_containers(client: docker.DockerClient, service: str | None) -> list[ContainerState]:
    """Every container of a service (or of every service), in any state."""
    label = SERVICE_LABEL if service is None else f"{SERVICE_LABEL}={service}"
    with translate_docker_errors("list service containers"):
        raw = client.api.containers(all=True, filters={"label": label})
    return [container_state(client, c["Id"]) for c in raw]


def image_info(client: docker.DockerClient, ref: str) -> ImageInfo | None:
    with translate_docker_errors(f"inspect image {ref}"):
        try:
            raw = client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
    return ImageInfo(
        id=raw["Id"],
        digests=tuple(raw.get("RepoDigests") or ()),
        architecture=raw.get("Architecture", ""),
        variant=raw.get("Variant", "") or "",
        os=raw.get("Os", ""),
    )


def pull_image(client: docker.DockerClient, ref: str, progress: PullProgress) -> ImageInfo:
    """Pull with the host's own credentials, streaming byte progress; errors in the stream fail."""
    repository, tag = _split_ref(ref)
    layers: dict[str, tuple[int, int]] = {}
    with translate_docker_errors(f"pull {ref}"):
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise DockerError(f"pull {ref}: {event.get('error')}")
            detail = event.get("progressDetail") or {}
            layer = event.get("id")
            if layer and detail.get("total"):
                layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
            elif layer and event.get("status") in ("Download complete", "Pull complete"):
                done = layers.get(layer)
                if done is not None:
                    layers[layer] = (done[1], done[1])
            current = sum(c for c, _ in layers.values())
            total = sum(t for _, t in layers.values())
            progress(current, total, str(event.get("status", "")))
    info = image_info(client, ref)
    if info is None:
        raise DockerError(f"pull {ref}: the image is not there after the pull")
    return info


def _split_ref(ref: str) -> tuple[str, str | None]:
    """``repo:tag`` or ``repo@digest`` into what the pull API takes."""
    if "@" in ref:
        return ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"

"""Containers: list, create, start, stop, restart, inspect, remove."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import docker
import docker.types

from shoal.protocol import SERVICE_LABEL, ContainerSummary, PortMapping, PsArgs, ServiceSpec
from shoal.protocol.service import NetworkAttachment

from ..engine import ContainerRecord, ContainerState
from .convert import engine_time
from .errors import translate_docker_errors


def _filters(args: PsArgs) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    if args.name:
        filters["name"] = list(args.name)
    if args.label:
        filters["label"] = list(args.label)
    if args.status:
        filters["status"] = list(args.status)
    if args.image:
        filters["ancestor"] = list(args.image)
    return filters


def _summary(raw: dict[str, Any]) -> ContainerSummary:
    names = raw.get("Names") or []
    name = names[0].lstrip("/") if names else raw["Id"][:12]
    ports = [
        PortMapping(
            private_port=p.get("PrivatePort", 0),
            type=p.get("Type", "tcp"),
            public_port=p.get("PublicPort"),
            ip=p.get("IP"),
        )
        for p in raw.get("Ports") or []
    ]
    return ContainerSummary(
        id=raw["Id"],
        name=name,
        image=raw.get("Image", ""),
        image_id=raw.get("ImageID", ""),
        command=raw.get("Command", ""),
        created=datetime.fromtimestamp(raw.get("Created", 0), UTC),
        state=raw.get("State", ""),
        status=raw.get("Status", ""),
        ports=ports,
        labels=raw.get("Labels") or {},
    )


def list_containers(client: docker.DockerClient, args: PsArgs) -> list[ContainerSummary]:
    """One Engine API call (``GET /containers/json``); no per-container inspect."""
    with translate_docker_errors("list containers"):
        raw = client.api.containers(all=args.all, filters=_filters(args))
    return [_summary(item) for item in raw]


def _nanos(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _mounts_and_binds(
    spec: ServiceSpec, files: Mapping[str, str]
) -> tuple[list[docker.types.Mount], list[str]]:
    """Mounts, and the binds that create a missing host directory (``create_host_path``)."""
    mounts: list[docker.types.Mount] = []
    binds: list[str] = []
    for v in spec.volumes:
        if v.selinux or (v.type == "bind" and v.create_host_path):
            flags = ["ro" if v.read_only else "rw"]
            flags += [v.selinux] if v.selinux else []
            flags += ["nocopy"] if v.nocopy else []
            binds.append(f"{v.source}:{v.target}:{','.join(flags)}")
        else:
            driver = None
            if v.driver_opts:
                driver = docker.types.DriverConfig("local", dict(v.driver_opts))
            mounts.append(
                docker.types.Mount(
                    v.target,
                    v.source,
                    type=v.type,
                    read_only=v.read_only,
                    no_copy=v.nocopy,
                    driver_config=driver,
                    labels=dict(v.volume_labels) or None,
                )
            )
    for target, host_path in files.items():
        mounts.append(docker.types.Mount(target, host_path, type="bind", read_only=True))
    return mounts, binds


def _restart_policy(spec: ServiceSpec) -> dict[str, Any] | None:
    if not spec.restart or spec.restart == "no":
        return None
    policy: dict[str, Any] = {"Name": spec.restart}
    if spec.restart == "on-failure" and spec.restart_max_attempts is not None:
        policy["MaximumRetryCount"] = spec.restart_max_attempts
    return policy


def _tmpfs(entries: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for entry in entries:
        path, _, options = entry.partition(":")
        out[path] = options
    return out or None


def _endpoint(api: Any, spec: ServiceSpec, attachment: NetworkAttachment) -> Any:
    return api.create_endpoint_config(
        aliases=[spec.name, *attachment.aliases],
        ipv4_address=attachment.ipv4_address,
        ipv6_address=attachment.ipv6_address,
    )


def create_service_container(
    client: docker.DockerClient,
    spec: ServiceSpec,
    name: str,
    labels: dict[str, str],
    files: Mapping[str, str] | None = None,
) -> str:
    """Create (not start) the container for one revision of a service.

    ``files`` maps a target path in the container to the host file mounted there read-only
    (secrets and configs). The networks must exist (:func:`.networks.ensure_network`); the
    first is joined at create, the others before start.
    """
    api = client.api
    port_bindings: dict[str, Any] = {}
    exposed: list[tuple[int, str] | int] = []
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        exposed.append((port.container_port, port.protocol))
        binding = (port.host_ip, port.host_port) if port.host_ip else port.host_port
        port_bindings.setdefault(key, []).append(binding)
    for entry in spec.expose:
        number, _, protocol = entry.partition("/")
        if (int(number), protocol) not in exposed:
            exposed.append((int(number), protocol))
    mounts, binds = _mounts_and_binds(spec, files or {})
    attachments = list(spec.networks)
    network_mode = spec.network_mode
    if attachments:
        network_mode = attachments[0].network.name
    logging = spec.logging
    host_config = api.create_host_config(
        port_bindings=port_bindings or None,
        mounts=mounts or None,
        binds=binds or None,
        restart_policy=_restart_policy(spec),
        network_mode=network_mode,
        mem_limit=spec.mem_limit,
        mem_reservation=spec.mem_reservation,
        memswap_limit=spec.memswap_limit,
        shm_size=spec.shm_size,
        nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
        cpu_shares=spec.cpu_shares,
        cpuset_cpus=spec.cpuset,
        pids_limit=spec.pids_limit,
        oom_score_adj=spec.oom_score_adj,
        privileged=spec.privileged,
        pid_mode=spec.pid,
        ipc_mode=spec.ipc,
        devices=list(spec.devices) or None,
        cap_add=list(spec.cap_add) or None,
        cap_drop=list(spec.cap_drop) or None,
        security_opt=list(spec.security_opt) or None,
        extra_hosts=list(spec.extra_hosts) or None,
        dns=list(spec.dns) or None,
        dns_search=list(spec.dns_search) or None,
        dns_opt=list(spec.dns_opt) or None,
        tmpfs=_tmpfs(spec.tmpfs),
        ulimits=[
            docker.types.Ulimit(name=n, soft=u.soft, hard=u.hard) for n, u in spec.ulimits.items()
        ]
        or None,
        init=spec.init,
        read_only=spec.read_only or None,
        sysctls=dict(spec.sysctls) or None,
        group_add=list(spec.group_add) or None,
        log_config=docker.types.LogConfig(
            type=logging.driver or "json-file", config=dict(logging.options)
        )
        if logging is not None
        else None,
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
    networking = None
    if attachments:
        first = attachments[0]
        networking = api.create_networking_config({first.network.name: _endpoint(api, spec, first)})
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
            hostname=spec.hostname,
            domainname=spec.domainname,
            mac_address=spec.mac_address,
            tty=spec.tty,
            stdin_open=spec.stdin_open,
            networking_config=networking,
        )
    container_id = str(created["Id"])
    try:
        for attachment in attachments[1:]:
            with translate_docker_errors(f"connect {name} to network {attachment.network.name}"):
                api.connect_container_to_network(
                    container_id,
                    attachment.network.name,
                    aliases=[spec.name, *attachment.aliases],
                    ipv4_address=attachment.ipv4_address,
                    ipv6_address=attachment.ipv6_address,
                )
    except BaseException:
        with contextlib.suppress(Exception):
            api.remove_container(container_id, force=True, v=True)
        raise
    return container_id


def rename_container(client: docker.DockerClient, container_id: str, name: str) -> None:
    with translate_docker_errors(f"rename container {container_id[:12]} to {name}"):
        client.api.rename(container_id, name)


def start_container(client: docker.DockerClient, container_id: str) -> None:
    with translate_docker_errors(f"start container {container_id[:12]}"):
        client.api.start(container_id)


def stop_container(client: docker.DockerClient, container_id: str, timeout: int) -> None:
    with translate_docker_errors(f"stop container {container_id[:12]}"):
        client.api.stop(container_id, timeout=timeout)


def restart_container(client: docker.DockerClient, container_id: str, timeout: int) -> None:
    with translate_docker_errors(f"restart container {container_id[:12]}"):
        client.api.restart(container_id, timeout=timeout)


def remove_container(
    client: docker.DockerClient, container_id: str, *, force: bool = False, volumes: bool = False
) -> None:
    """As ``docker rm``: a running one only with ``force``, anonymous volumes with ``volumes``."""
    with translate_docker_errors(f"remove container {container_id[:12]}"):
        client.api.remove_container(container_id, v=volumes, force=force)


def inspect_container(client: docker.DockerClient, container_id: str) -> dict[str, Any]:
    with translate_docker_errors(f"inspect container {container_id[:12]}"):
        raw: dict[str, Any] = client.api.inspect_container(container_id)
    return raw


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


def service_containers(client: docker.DockerClient, service: str | None) -> list[ContainerState]:
    """Every container of a service (or of every service), in any state."""
    label = SERVICE_LABEL if service is None else f"{SERVICE_LABEL}={service}"
    with translate_docker_errors("list service containers"):
        raw = client.api.containers(all=True, filters={"label": label})
    return [container_state(client, c["Id"]) for c in raw]


def container_record(raw: dict[str, Any]) -> ContainerRecord:
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
        created=engine_time(raw.get("Created")) or datetime.fromtimestamp(0, UTC),
        labels=raw.get("Labels") or {},
        size=int(raw.get("SizeRw") or 0),
        networks=frozenset(net_refs),
        volumes=frozenset(volumes),
    )

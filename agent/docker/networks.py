"""Networks: records, removal, and the networks a service's compose file defines."""

from __future__ import annotations

from typing import Any

import docker
import docker.types

from shoal.protocol import Conflict, NotFound
from shoal.protocol.service import NetworkSpec

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


NETWORK_LABEL = "shoal.network"
NETWORK_HASH_LABEL = "shoal.network-hash"


def _find(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    with translate_docker_errors(f"list networks named {name}"):
        found = client.api.networks(names=[name])
    exact = [n for n in found if n.get("Name") == name]
    if not exact:
        return None
    with translate_docker_errors(f"inspect network {name}"):
        raw: dict[str, Any] = client.api.inspect_network(exact[0]["Id"])
    return raw


def _users(client: docker.DockerClient, network_id: str) -> list[str]:
    """Names of the containers attached to a network, in any state."""
    with translate_docker_errors("list containers on a network"):
        raw = client.api.containers(all=True, filters={"network": network_id})
    return sorted(str((c.get("Names") or [c["Id"][:12]])[0]).lstrip("/") for c in raw)


def _create(client: docker.DockerClient, spec: NetworkSpec) -> None:
    ipam = None
    if spec.ipam is not None:
        pools = [
            docker.types.IPAMPool(
                subnet=p.subnet,
                iprange=p.ip_range,
                gateway=p.gateway,
                aux_addresses=dict(p.aux_addresses) or None,
            )
            for p in spec.ipam.config
        ]
        ipam = docker.types.IPAMConfig(
            driver=spec.ipam.driver or "default",
            pool_configs=pools,
            options=dict(spec.ipam.options) or None,
        )
    labels = {**spec.labels, NETWORK_LABEL: "1", NETWORK_HASH_LABEL: spec.definition_hash()}
    with translate_docker_errors(f"create network {spec.name}"):
        client.api.create_network(
            spec.name,
            driver=spec.driver or "bridge",
            options=dict(spec.driver_opts) or None,
            ipam=ipam,
            internal=spec.internal,
            attachable=spec.attachable,
            enable_ipv6=spec.enable_ipv6,
            labels=labels,
            check_duplicate=True,
        )


def ensure_network(client: docker.DockerClient, spec: NetworkSpec) -> str:
    """Make ``spec`` exist on this engine as defined; ``created``, ``recreated`` or ``reused``.

    A network Shoal made with the same definition is reused; with another definition
    it is recreated if no container uses it, else Conflict. An external network must
    exist (NotFound); a network of the same name that Shoal did not make is a Conflict.
    """
    for attempt in range(2):
        raw = _find(client, spec.name)
        if spec.external:
            if raw is None:
                raise NotFound(f"external network {spec.name!r} does not exist on this host")
            return "reused"
        if raw is None:
            try:
                _create(client, spec)
            except Conflict:
                if attempt:
                    raise
                continue  # created meanwhile by another deploy: look again
            return "created"
        labels = raw.get("Labels") or {}
        if NETWORK_LABEL not in labels:
            raise Conflict(
                f"network {spec.name!r} exists and was not created by Shoal; declare it"
                " external: true in the compose file to use it as it is"
            )
        if labels.get(NETWORK_HASH_LABEL) == spec.definition_hash():
            return "reused"
        users = _users(client, raw["Id"])
        if users:
            raise Conflict(
                f"network {spec.name!r} is defined differently from the one on this host, which"
                f" containers use ({', '.join(users[:5])}{', ...' if len(users) > 5 else ''});"
                " remove them first or give the network another name",
                detail={"network": spec.name, "containers": users},
            )
        remove_network(client, raw["Id"])
        _create(client, spec)
        return "recreated"
    raise Conflict(f"network {spec.name!r} could not be created")  # pragma: no cover

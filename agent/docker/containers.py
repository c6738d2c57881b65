"""Container operations against the Docker Engine API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import docker

from shoal.protocol import ContainerSummary, PortMapping, PsArgs

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

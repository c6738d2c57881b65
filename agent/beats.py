"""What a host runs: each service's revision, spec hash and container state.

For ``services`` and for heartbeats (so a controller sees drift without asking); apart
from :mod:`agent.deploy` so that an idle agent's heartbeat does not load the deploy
machinery.
"""

from __future__ import annotations

from typing import Any

from shoal.protocol import SERVICE_LABEL, ServiceBeat, ServiceStatus
from shoal.protocol.service import REVISION_LABEL, SPEC_HASH_LABEL

from .context import HostContext
from .engine import ContainerState
from .store import ServiceRecord


async def service_statuses(host: HostContext, service: str | None = None) -> list[ServiceStatus]:
    """The status of every service (or one) this host has a record or a container of."""
    containers = await host.calls.run(host.engine.service_containers, service)
    by_service: dict[str, list[ContainerState]] = {}
    for c in containers:
        by_service.setdefault(c.labels.get(SERVICE_LABEL, ""), []).append(c)
    names = set(by_service) | set(host.services.names())
    if service is not None:
        names &= {service}
    statuses = []
    for name in sorted(n for n in names if n):
        record = host.services.get(name)
        live = current_container(by_service.get(name, []), record)
        if record is None and live is None:
            continue
        statuses.append(status_of(name, record, live))
    return statuses


async def service_beats(host: HostContext) -> list[ServiceBeat]:
    """The services as a heartbeat carries them."""
    return [
        ServiceBeat(
            name=s.name, revision=s.revision, spec_hash=s.spec_hash, state=s.state, health=s.health
        )
        for s in await service_statuses(host)
    ]


def current_container(
    containers: list[ContainerState], record: ServiceRecord | None
) -> ContainerState | None:
    if record is not None and record.current is not None:
        for c in containers:
            if c.id == record.current.container_id:
                return c
    running = [c for c in containers if c.running]
    pool = running or containers
    return max(pool, key=lambda c: int(c.labels.get(REVISION_LABEL, "0") or 0), default=None)


def status_of(
    name: str, record: ServiceRecord | None, live: ContainerState | None
) -> ServiceStatus:
    current = record.current if record is not None else None
    labels: dict[str, Any] = live.labels if live is not None else {}
    return ServiceStatus(
        name=name,
        revision=current.revision if current else int(labels.get(REVISION_LABEL, 0) or 0),
        image=current.spec.image if current else "",
        image_id=current.image_id if current else (live.image_id if live else ""),
        spec_hash=current.spec_hash if current else str(labels.get(SPEC_HASH_LABEL, "")),
        state=live.status if live is not None else "missing",
        health=live.health if live is not None else "",
        container_id=live.id if live is not None else "",
        previous_revision=record.previous.revision if record and record.previous else None,
        updated_at=current.deployed_at if current else None,
    )

"""A live view of the fleet, kept from heartbeats and events (no polling of hosts).

:class:`FleetView` starts from the registry, then follows every heartbeat and event
subject; ``shoal top`` and the web dashboard render it. It holds one record per host
and the last events, so it stays cheap with 10,000 hosts: rendering pages and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from shoal.protocol import AgentEvent, AgentFacts, Selector, utcnow

from .errors import FleetError
from .fleet import Fleet
from .registry import AgentRecord, is_online
from .transport import Message, Subscription

log = logging.getLogger("shoal.controller")

CLOCK_SKEW_WARN = 30.0
"""Seconds of clock skew beyond which a host is shown as skewed."""
EVENTS_KEPT = 500
SORT_KEYS = ("host", "state", "cpu", "memory", "containers", "version")


@dataclass(frozen=True)
class HostRow:
    """One host as the views show it."""

    host: str
    state: str
    arch: str
    version: str
    containers: int | None
    running: int | None
    cpu_percent: float | None
    memory: int | None
    memory_total: int | None
    services: int
    unhealthy: int
    last_seen: datetime
    labels: dict[str, str]


def host_state(record: AgentRecord, now: datetime, offline_after: float | None = None) -> str:
    """online, offline, docker-down, insecure or clock-skew (the first that applies)."""
    facts = record.facts
    if not record.online or not is_online(facts, record.last_seen, offline_after):
        return "offline"
    if not facts.docker.reachable:
        return "docker-down"
    if abs(record.clock_skew) > CLOCK_SKEW_WARN:
        return "clock-skew"
    if facts.insecure:
        return "insecure"
    return "online"


def row_of(record: AgentRecord, now: datetime, offline_after: float | None = None) -> HostRow:
    facts = record.facts
    usage = facts.usage
    return HostRow(
        host=record.host_id,
        state=host_state(record, now, offline_after),
        arch=facts.arch + (f"/{facts.variant}" if facts.variant else ""),
        version=facts.agent_version,
        containers=facts.containers,
        running=usage.containers if usage is not None else None,
        cpu_percent=usage.cpu_percent if usage is not None else None,
        memory=usage.memory_usage if usage is not None else None,
        memory_total=usage.memory_total if usage is not None else None,
        services=len(facts.services),
        unhealthy=sum(1 for s in facts.services if s.health == "unhealthy"),
        last_seen=record.last_seen,
        labels=dict(facts.labels),
    )


def _sort_key(key: str) -> Callable[[HostRow], tuple[object, ...]]:
    order = {"offline": 0, "docker-down": 1, "clock-skew": 2, "insecure": 3, "online": 4}
    keys: dict[str, Callable[[HostRow], tuple[object, ...]]] = {
        "host": lambda r: (r.host,),
        "state": lambda r: (order.get(r.state, 9), r.host),
        "cpu": lambda r: (-(r.cpu_percent or 0.0), r.host),
        "memory": lambda r: (-(r.memory or 0), r.host),
        "containers": lambda r: (-(r.containers or 0), r.host),
        "version": lambda r: (r.version, r.host),
    }
    return keys.get(key, keys["host"])


class FleetView:
    """Hosts and recent events, live; ``changed`` is set whenever something moved."""

    def __init__(self, fleet: Fleet, *, events_kept: int = EVENTS_KEPT) -> None:
        self.fleet = fleet
        self.hosts: dict[str, AgentRecord] = {}
        self.events: deque[AgentEvent] = deque(maxlen=events_kept)
        self.changed = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self.beats = 0

    async def start(self) -> None:
        """Seed from the registry, then follow heartbeats and events."""
        nc = self.fleet.nc
        subjects = self.fleet.subjects
        self._subscriptions = [
            await nc.subscribe(subjects.heartbeat_all(), self._on_beat),
            await nc.subscribe(subjects.events_all(), self._on_event),
        ]
        try:
            for record in await self.fleet.agents():
                self.hosts.setdefault(record.host_id, record)
        except FleetError as exc:
            log.warning("no registry to start from (%s); hosts appear as they beat", exc)
        self.changed.set()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []

    async def __aenter__(self) -> FleetView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_beat(self, msg: Message) -> None:
        try:
            facts = AgentFacts.model_validate_json(msg.data)
        except ValidationError:
            return
        self.beats += 1
        self.hosts[facts.host_id] = AgentRecord(
            facts.host_id, facts, utcnow(), facts.status == "online"
        )
        self.changed.set()

    async def _on_event(self, msg: Message) -> None:
        try:
            event = AgentEvent.model_validate_json(msg.data)
        except ValidationError:
            return
        self.events.append(event)
        self.changed.set()

    # --- what the views show ---------------------------------------------------------

    def rows(self, *, selector: Selector | None = None, sort: str = "state") -> list[HostRow]:
        now = utcnow()
        offline_after = self.fleet.offline_after
        chosen: Iterable[AgentRecord] = self.hosts.values()
        if selector is not None:
            chosen = [r for r in chosen if selector.matches(r.host_id, r.facts.selectable())]
        return sorted((row_of(r, now, offline_after) for r in chosen), key=_sort_key(sort))

    def counts(self, rows: Iterable[HostRow] | None = None) -> Counter[str]:
        return Counter(r.state for r in (rows if rows is not None else self.rows()))

    def host(self, host_id: str) -> AgentRecord | None:
        return self.hosts.get(host_id)

    def recent(self, limit: int = 20, host: str | None = None) -> list[AgentEvent]:
        chosen = [e for e in self.events if host is None or e.host_id == host]
        return chosen[-limit:]

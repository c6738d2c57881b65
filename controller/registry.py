"""The agent registry: a JetStream stream keeping the last heartbeat per host.

Agents only publish core NATS heartbeats on ``<prefix>.hb.<host>``; this
controller-side stream captures them (also across leaf nodes) and keeps the
last one per subject. A host that stops heartbeating stays in the stream, and
so stays known as offline, until it is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError

from shoal.protocol import AgentFacts, Subjects, utcnow

from .errors import RegistryUnavailable
from .transport import JetStream, StreamSpec, is_transient

log = logging.getLogger("shoal.controller")
T = TypeVar("T")

RECOVERY_WAIT = 3.0
"""How long to keep asking a JetStream that is there but not answering yet (a restarted
server or cluster still recovering its streams) before giving up on the registry."""
RECOVERY_POLL = 0.25


def registry_stream_name(subjects: Subjects) -> str:
    """``SHOAL_REGISTRY`` for the default prefix, suffixed for others."""
    if subjects.prefix == "shoal":
        return "SHOAL_REGISTRY"
    return "SHOAL_REGISTRY_" + re.sub(r"[^A-Za-z0-9_-]", "_", subjects.prefix).upper()


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """What the controller knows of one host."""

    host_id: str
    facts: AgentFacts
    last_seen: datetime
    online: bool

    @property
    def state(self) -> str:
        return "online" if self.online else "offline"

    @property
    def clock_skew(self) -> float:
        """Seconds the agent's clock is ahead of the server's (negative: behind)."""
        return (self.facts.sent_at - self.last_seen).total_seconds()


def is_online(facts: AgentFacts, last_seen: datetime, offline_after: float | None) -> bool:
    """Online unless the agent said it is leaving or missed three heartbeats."""
    if facts.status == "leaving":
        return False
    limit = offline_after if offline_after is not None else 3 * facts.heartbeat_interval
    return utcnow() - last_seen <= timedelta(seconds=limit)


async def with_recovery(
    call: Callable[[], Awaitable[T]],
    *,
    wait: float | None = None,
    poll: float | None = None,
) -> T:
    """Await ``call()``, asking again every ``poll`` seconds (``RECOVERY_POLL``) for up to
    ``wait`` seconds (``RECOVERY_WAIT``) while it fails with a transient
    :class:`RegistryUnavailable` (see :func:`is_transient`). The last error is raised
    when the time is up; any other error at once."""
    wait = RECOVERY_WAIT if wait is None else wait
    poll = RECOVERY_POLL if poll is None else poll
    deadline = time.monotonic() + wait
    while True:
        try:
            return await call()
        except RegistryUnavailable as exc:
            if not is_transient(exc) or time.monotonic() + poll > deadline:
                raise
            log.info(
                "registry: JetStream is not answering yet (%s); asking again in %.2fs",
                exc.__cause__ or exc.message,
                poll,
            )
        await asyncio.sleep(poll)


class Registry:
    """The registry stream, read as one record per host."""

    def __init__(self, js: JetStream, subjects: Subjects, *, replicas: int = 1) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = registry_stream_name(subjects)
        self.replicas = replicas

    async def ensure(self) -> bool:
        """Create the stream if it does not exist. True if it was created."""
        spec = StreamSpec(
            name=self.stream,
            description="Shoal agent registry: last heartbeat per host",
            subjects=(self.subjects.heartbeat_all(),),
            replicas=self.replicas,
            max_msgs_per_subject=1,
            allow_direct=True,
        )
        created = await self.js.ensure_stream(spec, action="registry")
        if created:
            log.info("created registry stream %s", self.stream)
        return created

    async def exists(self) -> bool:
        return await self.js.stream_exists(self.stream, action="registry")

    async def read(self, offline_after: float | None = None) -> list[AgentRecord]:
        """The last heartbeat of every known host."""
        messages = await self.js.last_per_subject(
            self.stream, self.subjects.heartbeat_all(), action="registry"
        )
        records: dict[str, AgentRecord] = {}
        for message in messages:
            record = self._checked(message.subject, message.data, message.time, offline_after)
            if record is not None:
                records[record.host_id] = record
        return sorted(records.values(), key=lambda r: r.host_id)

    def _checked(
        self, subject: str, data: bytes, last_seen: datetime, offline_after: float | None
    ) -> AgentRecord | None:
        try:
            host_id = self.subjects.host_of_heartbeat(subject)
            facts = AgentFacts.model_validate_json(data)
        except (ValueError, ValidationError) as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", subject, exc)
            return None
        if facts.host_id != host_id:
            log.warning("ignoring heartbeat on %s claiming host %s", subject, facts.host_id)
            return None
        return AgentRecord(host_id, facts, last_seen, is_online(facts, last_seen, offline_after))

    async def forget(self, host_id: str) -> bool:
        """Drop a host's last heartbeat. True if it was known."""
        subject = self.subjects.heartbeat(host_id)
        return await self.js.purge_subject(self.stream, subject, action="registry")


__all__ = [
    "AgentRecord",
    "Registry",
    "is_online",
    "is_transient",
    "registry_stream_name",
    "with_recovery",
]

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
from dataclasses import dataclass
from datetime import datetime, timedelta

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from pydantic import ValidationError

from controller.transport import jetstream_errors
from protocol import AgentFacts, Subjects, utcnow

log = logging.getLogger("shoal.controller")

READ_TIMEOUT = 5.0


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


class Registry:
    def __init__(self, js: JetStreamContext, subjects: Subjects, *, replicas: int = 1) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = registry_stream_name(subjects)
        self.replicas = replicas

    async def ensure(self) -> bool:
        """Create the stream if it does not exist. True if it was created."""
        async with jetstream_errors("registry"):
            try:
                await self.js.stream_info(self.stream)
                return False
            except nats.js.errors.NotFoundError:
                pass
            await self.js.add_stream(
                StreamConfig(
                    name=self.stream,
                    description="Shoal agent registry: last heartbeat per host",
                    subjects=[self.subjects.heartbeat_all()],
                    retention=RetentionPolicy.LIMITS,
                    max_msgs_per_subject=1,
                    discard=DiscardPolicy.OLD,
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                    allow_direct=True,
                )
            )
            log.info("created registry stream %s", self.stream)
            return True

    async def exists(self) -> bool:
        async with jetstream_errors("registry"):
            try:
                await self.js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                return False
            return True

    async def read(self, offline_after: float | None = None) -> list[AgentRecord]:
        """The last heartbeat of every known host."""
        async with jetstream_errors("registry"):
            info = await self.js.stream_info(self.stream)
            if info.state.messages == 0:
                return []
            records: dict[str, AgentRecord] = {}
            done = asyncio.Event()
            sub = await self.js.subscribe(
                self.subjects.heartbeat_all(),
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
            try:
                # READ_TIMEOUT bounds the silence between two messages; the whole read is
                # bounded too, by a limit that grows with the number of hosts.
                async with asyncio.timeout(READ_TIMEOUT + info.state.messages / 1000):
                    while not done.is_set():
                        msg = await sub.next_msg(timeout=READ_TIMEOUT)
                        record = self._record(msg, offline_after)
                        if record is not None:
                            records[record.host_id] = record
                        if msg.metadata.num_pending == 0:
                            done.set()
            finally:
                await sub.unsubscribe()
        return sorted(records.values(), key=lambda r: r.host_id)

    def _record(self, msg: Msg, offline_after: float | None) -> AgentRecord | None:
        try:
            host_id = self.subjects.host_of_heartbeat(msg.subject)
            facts = AgentFacts.model_validate_json(msg.data)
        except (ValueError, ValidationError) as exc:
            log.warning("ignoring malformed heartbeat on %s: %s", msg.subject, exc)
            return None
        if facts.host_id != host_id:
            log.warning("ignoring heartbeat on %s claiming host %s", msg.subject, facts.host_id)
            return None
        last_seen = msg.metadata.timestamp
        return AgentRecord(host_id, facts, last_seen, is_online(facts, last_seen, offline_after))

    async def forget(self, host_id: str) -> bool:
        """Drop a host's last heartbeat. True if it was known."""
        subject = self.subjects.heartbeat(host_id)
        async with jetstream_errors("registry"):
            info = await self.js.stream_info(self.stream, subjects_filter=subject)
            known = bool(info.state.subjects)
            if known:
                await self.js.purge_stream(self.stream, subject=subject)
        return known

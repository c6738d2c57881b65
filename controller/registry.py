"""The agent registry: a JetStream stream keeping the last heartbeat per host.

Agents only publish core NATS heartbeats on ``<prefix>.hb.<host>``; this
controller-side stream captures them (also across leaf nodes) and keeps the
last one per subject. A host that stops heartbeating stays in the stream, and
so stays known as offline, until it is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import nats.errors
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

from shoal.protocol import AgentFacts, Subjects, utcnow

from .errors import RegistryUnavailable
from .transport import jetstream_errors

log = logging.getLogger("shoal.controller")
T = TypeVar("T")

READ_TIMEOUT = 5.0
"""Longest silence while reading the registry (no heartbeat arriving) before giving up."""

DIRECT_BATCH = 5000
"""Heartbeats asked for per batched direct get; the read pages on until none is pending."""

RECOVERY_WAIT = 3.0
"""How long to keep asking a JetStream that is there but not answering yet (a restarted
server or cluster still recovering its streams) before giving up on the registry."""
RECOVERY_POLL = 0.25

_UNAVAILABLE_FOR_NOW = frozenset({10008, 10118})
"""JetStream error codes that say "not now": system temporarily unavailable, stream offline."""
_NOT_ENABLED = frozenset({10039, 10076})
"""JetStream error codes that say "never here": not enabled (for the account)."""


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


def is_transient(exc: RegistryUnavailable) -> bool:
    """True when JetStream is there but does not answer yet, so the registry stream is
    presumably there too: worth asking again shortly rather than falling back to ping
    discovery. False for "JetStream is not enabled" and for anything unknown."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):  # nats.errors.TimeoutError included
        return True
    if isinstance(
        cause, nats.errors.ConnectionReconnectingError | nats.errors.StaleConnectionError
    ):
        return True
    if isinstance(cause, nats.js.errors.APIError) and not isinstance(
        cause, nats.js.errors.NotFoundError
    ):
        if cause.err_code in _UNAVAILABLE_FOR_NOW:
            return True
        known = cause.err_code is not None and cause.err_code not in _NOT_ENABLED
        return cause.code == 503 and known
    return False


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
            # READ_TIMEOUT bounds the silence between two messages; the whole read is
            # bounded too, by a limit that grows with the number of hosts.
            async with asyncio.timeout(READ_TIMEOUT + info.state.messages / 1000):
                records: dict[str, AgentRecord] | None = None
                if info.config.allow_direct and self._batches_direct_gets():
                    records = await self._read_direct(offline_after)
                if records is None:  # no direct get here: read through a consumer
                    records = await self._read_consumer(offline_after)
        return sorted(records.values(), key=lambda r: r.host_id)

    def _batches_direct_gets(self) -> bool:
        """Whether the server answers batched direct gets (nats-server 2.11 and later)."""
        version = self.js._nc.connected_server_version
        try:
            return (version.major, version.minor) >= (2, 11)
        except (TypeError, ValueError):
            return False

    async def _read_direct(self, offline_after: float | None) -> dict[str, AgentRecord] | None:
        """Every heartbeat by batched direct gets: one request per DIRECT_BATCH hosts.

        The stream keeps one message per subject, so reading it from the first sequence
        on, subject by subject, yields each host's last heartbeat; a host that heartbeats
        during the read is met again further on, and its later heartbeat wins. None when
        no server answers direct gets for the stream, or one answers without batching
        (an older server in the cluster): the caller then reads through a consumer.
        """
        nc = self.js._nc
        api = f"{self.js._prefix}.DIRECT.GET.{self.stream}"
        heartbeats = self.subjects.heartbeat_all()
        records: dict[str, AgentRecord] = {}
        loop = asyncio.get_running_loop()
        page: asyncio.Future[tuple[str, int, int]] = loop.create_future()
        last_activity = time.monotonic()

        async def on_msg(msg: Msg) -> None:
            nonlocal last_activity
            last_activity = time.monotonic()
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is None and "Nats-Num-Pending" not in headers:
                if not page.done():  # a single message: this server does not batch
                    page.set_result(("unbatched", 0, 0))
                return
            if status is None:
                record = self._direct_record(msg, headers, offline_after)
                if record is not None:
                    records[record.host_id] = record
                return
            if not page.done():
                # 204 ends a batch: how many are pending after it and the last sequence sent.
                pending = int(headers.get("Nats-Num-Pending", "0") or 0)
                last = int(headers.get("Nats-Last-Sequence", "0") or 0)
                page.set_result((status, pending, last))

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        try:
            seq = 1
            while True:
                request = {"seq": seq, "next_by_subj": heartbeats, "batch": DIRECT_BATCH}
                await nc.publish(api, json.dumps(request).encode(), reply=inbox)
                last_activity = time.monotonic()
                while not page.done():
                    idle = time.monotonic() - last_activity
                    if idle >= READ_TIMEOUT:
                        raise TimeoutError
                    await asyncio.wait([page], timeout=READ_TIMEOUT - idle)
                status, pending, last = page.result()
                page = loop.create_future()
                if status in ("503", "unbatched"):  # no responders, or no batches: not here
                    return None
                if status == "404":  # nothing at or after seq
                    break
                if status != "204":
                    raise nats.js.errors.APIError(
                        code=int(status) if status.isdigit() else None,
                        description=f"direct get answered {status}",
                    )
                if pending <= 0 or last < seq:
                    break
                seq = last + 1
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return records

    def _direct_record(
        self, msg: Msg, headers: dict[str, str], offline_after: float | None
    ) -> AgentRecord | None:
        subject = headers.get("Nats-Subject", "")
        try:
            stamp = headers["Nats-Time-Stamp"]
            last_seen = _parse_timestamp(stamp)
        except (KeyError, ValueError):
            log.warning("ignoring a registry message without a valid time stamp on %s", subject)
            return None
        return self._checked(subject, msg.data, last_seen, offline_after)

    async def _read_consumer(self, offline_after: float | None) -> dict[str, AgentRecord]:
        """Every heartbeat through an ordered consumer (when direct gets are off)."""
        records: dict[str, AgentRecord] = {}
        sub = await self.js.subscribe(
            self.subjects.heartbeat_all(),
            stream=self.stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                record = self._checked(msg.subject, msg.data, msg.metadata.timestamp, offline_after)
                if record is not None:
                    records[record.host_id] = record
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return records

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
        async with jetstream_errors("registry"):
            info = await self.js.stream_info(self.stream, subjects_filter=subject)
            known = bool(info.state.subjects)
            if known:
                await self.js.purge_stream(self.stream, subject=subject)
        return known


def _parse_timestamp(stamp: str) -> datetime:
    """A JetStream time stamp (RFC 3339, nanoseconds, ``Z``) as an aware datetime."""
    head, dot, tail = stamp.rstrip("Z").partition(".")
    fraction = tail[:6].ljust(6, "0") if dot else "000000"
    return datetime.fromisoformat(f"{head}.{fraction}").replace(tzinfo=UTC)

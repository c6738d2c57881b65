"""JetStream for the controller: streams it reads and keeps, key-value buckets.

The registry, the audit trail and the rollout locks use these, with Shoal's own
types in and out; JetStream's errors become :class:`RegistryUnavailable` (or, for
buckets, :class:`KeyExists` and :class:`WrongRevision`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from ..errors import KeyExists, RegistryUnavailable, WrongRevision
from .connection import Connection, Message, jetstream_errors

log = logging.getLogger("shoal.controller")

READ_TIMEOUT = 5.0
"""Longest silence while reading a stream (no message arriving) before giving up."""

DIRECT_BATCH = 5000
"""Messages asked for per batched direct get; the read pages on until none is pending."""

_UNAVAILABLE_FOR_NOW = frozenset({10008, 10118})
"""JetStream error codes that say "not now": system temporarily unavailable, stream offline."""
_NOT_ENABLED = frozenset({10039, 10076})
"""JetStream error codes that say "never here": not enabled (for the account)."""


def is_transient(exc: RegistryUnavailable) -> bool:
    """True when JetStream is there but does not answer yet: worth asking again shortly.

    False for "JetStream is not enabled" and for anything unknown.
    """
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


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from a stream, with the server's time stamp."""

    subject: str
    data: bytes
    time: datetime


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A file-backed stream that keeps messages within limits, the oldest dropped first."""

    name: str
    description: str
    subjects: tuple[str, ...]
    replicas: int = 1
    max_msgs_per_subject: int | None = None
    max_age: float | None = None
    allow_direct: bool = False

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs_per_subject=self.max_msgs_per_subject or -1,
            max_age=self.max_age,
            allow_direct=True if self.allow_direct else None,
        )


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """A file-backed key-value bucket whose entries expire after ``ttl`` seconds."""

    name: str
    description: str
    ttl: float
    history: int = 1


class Bucket:
    """One key-value bucket."""

    def __init__(self, kv: KeyValue, action: str, *, js: JetStream, name: str) -> None:
        self._kv = kv
        self.action = action
        self._js = js
        self.name = name

    async def create(self, key: str, value: bytes) -> int:
        """Create ``key``; its revision. :class:`KeyExists` when it is there already."""
        async with jetstream_errors(self.action):
            try:
                return int(await self._kv.create(key, value))
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                # nats-py reads the key back after a refused create, to tell a deleted key
                # from a live one; a key that expired in between is not found: it existed.
                raise KeyExists(f"{self.action}: {key!r} exists") from None

    async def update(self, key: str, value: bytes, *, last: int) -> int:
        """Replace ``key`` if still at revision ``last``; else :class:`WrongRevision`."""
        async with jetstream_errors(self.action):
            try:
                return int(await self._kv.update(key, value, last=last))
            except nats.js.errors.KeyWrongLastSequenceError:
                raise WrongRevision(f"{self.action}: {key!r} changed since {last}") from None

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, None when it is absent or deleted."""
        async with jetstream_errors(self.action):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.NotFoundError:  # KeyNotFoundError and KeyDeletedError too
                return None
            return entry.value

    async def entry(self, key: str) -> tuple[bytes, int] | None:
        """The value of ``key`` and its revision, None when it is absent or deleted."""
        async with jetstream_errors(self.action):
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.NotFoundError:
                return None
            return entry.value or b"", int(entry.revision or 0)

    async def put(self, key: str, value: bytes) -> int:
        """Write ``key`` whatever its revision; the new revision."""
        async with jetstream_errors(self.action):
            return int(await self._kv.put(key, value))

    async def purge(self, key: str) -> None:
        """Remove ``key`` and its history."""
        async with jetstream_errors(self.action):
            await self._kv.purge(key)

    async def entries(self) -> dict[str, bytes]:
        """Every live key's value (an empty bucket gives ``{}``).

        Read as the last message per subject of the bucket's stream, in batches: no
        consumer is left behind (nats-py's ``keys()`` leaves one per call, and a stream
        takes 1,000) and no round trip per key. Deleted and purged keys end in an empty
        marker message, so they are left out as an empty value is.
        """
        prefix = f"$KV.{self.name}."
        messages = await self._js.last_per_subject(
            f"KV_{self.name}", f"{prefix}>", action=self.action
        )
        return {
            m.subject.removeprefix(prefix): m.data
            for m in messages
            if m.data and m.subject.startswith(prefix)
        }

    async def delete(self, key: str, *, last: int) -> None:
        """Delete ``key`` if still at revision ``last``."""
        async with jetstream_errors(self.action):
            try:
                await self._kv.delete(key, last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise WrongRevision(f"{self.action}: {key!r} changed since {last}") from None


class JetStream:
    """The JetStream of a connection, with each call bounded by ``timeout``."""

    def __init__(self, connection: Connection, *, timeout: float) -> None:
        self.connection = connection
        self.raw: JetStreamContext = connection.raw.jetstream(timeout=timeout)

    # --- streams ---------------------------------------------------------------------

    async def stream_exists(self, name: str, *, action: str) -> bool:
        async with jetstream_errors(action):
            try:
                await self.raw.stream_info(name)
            except nats.js.errors.NotFoundError:
                return False
            return True

    async def ensure_stream(self, spec: StreamSpec, *, action: str) -> bool:
        """Create the stream unless it exists (as it is: never changed). True if created."""
        if await self.stream_exists(spec.name, action=action):
            return False
        async with jetstream_errors(action):
            await self.raw.add_stream(spec.config())
        return True

    async def purge_subject(self, name: str, subject: str, *, action: str) -> bool:
        """Drop the messages of one subject. True if there were any."""
        async with jetstream_errors(action):
            info = await self.raw.stream_info(name, subjects_filter=subject)
            known = bool(info.state.subjects)
            if known:
                await self.raw.purge_stream(name, subject=subject)
        return known

    async def last_per_subject(
        self, name: str, subjects: str, *, action: str
    ) -> list[StoredMessage]:
        """The last message of every subject matching ``subjects``, by subject."""
        async with jetstream_errors(action):
            try:
                info = await self.raw.stream_info(name)
            except nats.js.errors.NotFoundError as exc:
                raise RegistryUnavailable(f"{action}: stream {name} does not exist") from exc
            if info.state.messages == 0:
                return []
            # READ_TIMEOUT bounds the silence between two messages; the whole read is
            # bounded too, by a limit that grows with the number of messages.
            async with asyncio.timeout(READ_TIMEOUT + info.state.messages / 1000):
                found: dict[str, StoredMessage] | None = None
                if info.config.allow_direct and self._batches_direct_gets():
                    found = await self._read_direct(name, subjects)
                if found is None:  # no direct get here: read through a consumer
                    found = await self._read_consumer(name, subjects)
        return list(found.values())

    async def read_stream(
        self, name: str, subjects: str, *, since: datetime | None, action: str
    ) -> AsyncGenerator[StoredMessage, None]:
        """Every message on ``subjects`` (from ``since`` on), oldest first, one by one."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if since is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since.astimezone(UTC)
            )
        async with jetstream_errors(action):
            try:
                info = await self.raw.stream_info(name)
            except nats.js.errors.NotFoundError as exc:
                raise RegistryUnavailable(f"{action}: stream {name} does not exist") from exc
            if info.state.messages == 0:
                return
            sub = await self.raw.subscribe(
                subjects,
                stream=name,
                ordered_consumer=True,
                config=config,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=READ_TIMEOUT)
                    except nats.errors.TimeoutError:
                        break  # nothing (more) since the start time
                    yield StoredMessage(msg.subject, msg.data, msg.metadata.timestamp)
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()

    def _batches_direct_gets(self) -> bool:
        """Whether the server answers batched direct gets (nats-server 2.11 and later)."""
        version = self.connection.server_version
        return version is not None and version >= (2, 11)

    async def _read_direct(self, name: str, subjects: str) -> dict[str, StoredMessage] | None:
        """The last message per subject by batched direct gets: DIRECT_BATCH per request.

        The stream keeps one message per subject, so reading it from the first sequence
        on, subject by subject, yields each subject's last message; a subject written
        during the read is met again further on, and its later message wins. None when
        no server answers direct gets for the stream, or one answers without batching
        (an older server in the cluster): the caller then reads through a consumer.
        """
        connection = self.connection
        api = f"{self.raw._prefix}.DIRECT.GET.{name}"
        found: dict[str, StoredMessage] = {}
        loop = asyncio.get_running_loop()
        page: asyncio.Future[tuple[str, int, int]] = loop.create_future()
        last_activity = time.monotonic()

        async def on_msg(msg: Message) -> None:
            nonlocal last_activity
            last_activity = time.monotonic()
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is None and "Nats-Num-Pending" not in headers:
                if not page.done():  # a single message: this server does not batch
                    page.set_result(("unbatched", 0, 0))
                return
            if status is None:
                stored = _direct_message(msg, headers)
                if stored is not None:
                    found[stored.subject] = stored
                return
            if not page.done():
                # 204 ends a batch: how many are pending after it and the last sequence sent.
                pending = int(headers.get("Nats-Num-Pending", "0") or 0)
                last = int(headers.get("Nats-Last-Sequence", "0") or 0)
                page.set_result((status, pending, last))

        inbox = connection.new_inbox()
        sub = await connection.subscribe(inbox, on_msg)
        try:
            seq = 1
            while True:
                request = {"seq": seq, "next_by_subj": subjects, "batch": DIRECT_BATCH}
                await connection.raw.publish(api, json.dumps(request).encode(), reply=inbox)
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
            await sub.unsubscribe()
        return found

    async def _read_consumer(self, name: str, subjects: str) -> dict[str, StoredMessage]:
        """The last message per subject through an ordered consumer."""
        found: dict[str, StoredMessage] = {}
        sub = await self.raw.subscribe(
            subjects,
            stream=name,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                found[msg.subject] = StoredMessage(msg.subject, msg.data, msg.metadata.timestamp)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return found

    # --- key-value buckets -------------------------------------------------------------

    async def bucket(self, spec: BucketSpec, *, action: str) -> Bucket:
        """The bucket, created if missing."""
        async with jetstream_errors(action):
            try:
                kv = await self.raw.key_value(spec.name)
            except nats.js.errors.BucketNotFoundError:
                log.info("creating key-value bucket %s", spec.name)
                kv = await self.raw.create_key_value(
                    KeyValueConfig(
                        bucket=spec.name,
                        description=spec.description,
                        history=spec.history,
                        ttl=spec.ttl,
                        storage=StorageType.FILE,
                        direct=True,  # entries() reads it with batched direct gets
                    )
                )
            else:
                if not getattr(kv, "_direct", False):  # known from the stream nats-py read
                    await self._allow_direct(f"KV_{spec.name}")
        return Bucket(kv, action, js=self, name=spec.name)

    async def _allow_direct(self, stream: str) -> None:
        """Turn on direct gets for a bucket made without them (by an earlier version)."""
        info = await self.raw.stream_info(stream)
        if not info.config.allow_direct:
            log.info("allowing direct gets on %s", stream)
            await self.raw.update_stream(dataclasses.replace(info.config, allow_direct=True))


def _direct_message(msg: Message, headers: dict[str, str]) -> StoredMessage | None:
    subject = headers.get("Nats-Subject", "")
    try:
        stamp = _parse_timestamp(headers["Nats-Time-Stamp"])
    except (KeyError, ValueError):
        log.warning("ignoring a stream message without a valid time stamp on %s", subject)
        return None
    return StoredMessage(subject, msg.data, stamp)


def _parse_timestamp(stamp: str) -> datetime:
    """A JetStream time stamp (RFC 3339, nanoseconds, ``Z``) as an aware datetime."""
    head, dot, tail = stamp.rstrip("Z").partition(".")
    fraction = tail[:6].ljust(6, "0") if dot else "000000"
    return datetime.fromisoformat(f"{head}.{fraction}").replace(tzinfo=UTC)

"""The audit stream: a JetStream stream keeping every agent's audit records."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from pydantic import ValidationError

from shoal.protocol import AuditRecord, Selector, Subjects

from .registry import registry_stream_name
from .transport import jetstream_errors

log = logging.getLogger("shoal.controller")

DEFAULT_MAX_AGE = 90 * 24 * 3600.0
READ_TIMEOUT = 5.0


def audit_stream_name(subjects: Subjects) -> str:
    return registry_stream_name(subjects).replace("REGISTRY", "AUDIT", 1)


class AuditStream:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        replicas: int = 1,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.js = js
        self.subjects = subjects
        self.stream = audit_stream_name(subjects)
        self.replicas = replicas
        self.max_age = max_age

    async def ensure(self) -> bool:
        """Create the stream if it does not exist. True if it was created."""
        async with jetstream_errors("audit stream"):
            try:
                await self.js.stream_info(self.stream)
                return False
            except nats.js.errors.NotFoundError:
                pass
            await self.js.add_stream(
                StreamConfig(
                    name=self.stream,
                    description="Shoal audit trail: one record per request decision",
                    subjects=[f"{self.subjects.prefix}.audit.>"],
                    retention=RetentionPolicy.LIMITS,
                    max_age=self.max_age,
                    discard=DiscardPolicy.OLD,
                    storage=StorageType.FILE,
                    num_replicas=self.replicas,
                )
            )
            log.info("created audit stream %s", self.stream)
            return True

    async def read(
        self, selector: Selector, since: datetime | None = None, limit: int = 10_000
    ) -> list[AuditRecord]:
        """The last ``limit`` records of hosts matching the selector's globs, oldest first."""
        records: list[AuditRecord] = []
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if since is not None:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since.astimezone(UTC),
            )
        async with jetstream_errors("audit stream"):
            info = await self.js.stream_info(self.stream)
            if info.state.messages == 0:
                return []
            sub = await self.js.subscribe(
                f"{self.subjects.prefix}.audit.>",
                stream=self.stream,
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
                    try:
                        record = AuditRecord.model_validate_json(msg.data)
                    except ValidationError:
                        log.warning("ignoring a malformed audit record on %s", msg.subject)
                    else:
                        # The subject says which agent published it (NATS permissions
                        # bind it); a record claiming another host is not trusted.
                        if msg.subject != self.subjects.audit(record.host):
                            log.warning(
                                "ignoring an audit record for %s on %s", record.host, msg.subject
                            )
                        elif selector.matches(record.host, {}):
                            records.append(record)
                    if msg.metadata.num_pending == 0:
                        break
            finally:
                await sub.unsubscribe()
        return records[-limit:]

"""The audit stream: a JetStream stream keeping every agent's audit records."""

from __future__ import annotations

import logging
from collections import deque
from contextlib import aclosing
from datetime import datetime

from pydantic import ValidationError

from shoal.protocol import AuditRecord, Selector, Subjects

from .registry import registry_stream_name
from .transport import JetStream, StreamSpec

log = logging.getLogger("shoal.controller")

DEFAULT_MAX_AGE = 90 * 24 * 3600.0


def audit_stream_name(subjects: Subjects) -> str:
    return registry_stream_name(subjects).replace("REGISTRY", "AUDIT", 1)


class AuditStream:
    def __init__(
        self,
        js: JetStream,
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
        spec = StreamSpec(
            name=self.stream,
            description="Shoal audit trail: one record per request decision",
            subjects=(f"{self.subjects.prefix}.audit.>",),
            replicas=self.replicas,
            max_age=self.max_age,
        )
        created = await self.js.ensure_stream(spec, action="audit stream")
        if created:
            log.info("created audit stream %s", self.stream)
        return created

    async def read(
        self, selector: Selector, since: datetime | None = None, limit: int = 10_000
    ) -> list[AuditRecord]:
        """The last ``limit`` records of hosts matching the selector's globs, oldest first."""
        records: deque[AuditRecord] = deque(maxlen=max(0, limit))
        messages = self.js.read_stream(
            self.stream, f"{self.subjects.prefix}.audit.>", since=since, action="audit stream"
        )
        async with aclosing(messages):
            async for message in messages:
                try:
                    record = AuditRecord.model_validate_json(message.data)
                except ValidationError:
                    log.warning("ignoring a malformed audit record on %s", message.subject)
                    continue
                # The subject says which agent published it (NATS permissions bind it); a
                # record claiming another host is not trusted.
                if message.subject != self.subjects.audit(record.host):
                    log.warning(
                        "ignoring an audit record for %s on %s", record.host, message.subject
                    )
                elif selector.matches(record.host, {}):
                    records.append(record)
        return list(records)

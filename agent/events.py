"""Agent events: lifecycle events of this agent and the engine's container events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from shoal.protocol import AgentEvent, EventKind, ShoalError, Subjects, utcnow

from .calls import EngineCalls
from .connection import AgentConnection
from .engine import Engine
from .identity import Identity
from .metrics import AgentMetrics
from .streams import StreamClosed, ThreadedStream, container_event

log = logging.getLogger("shoal.agent")

EVENTS_RETRY = 2.0
"""Seconds between attempts to (re)open the engine's event stream."""


class Events:
    """Publishes this host's events on its event subjects."""

    def __init__(
        self,
        connection: AgentConnection,
        subjects: Subjects,
        identity: Identity,
        metrics: AgentMetrics,
    ) -> None:
        self._connection = connection
        self._subjects = subjects
        self._identity = identity
        self._metrics = metrics

    async def publish(self, kind: EventKind, message: str = "") -> None:
        """An event of this agent (started, stopping, engine lost or regained)."""
        identity = self._identity
        await self.publish_event(
            AgentEvent(
                host_id=identity.host_id,
                instance=identity.instance,
                kind=kind,
                at=utcnow(),
                message=message,
            )
        )

    async def publish_event(self, event: AgentEvent) -> None:
        subject = self._subjects.event(self._identity.host_id, event.kind)
        data = event.model_dump_json().encode()
        if await self._connection.publish(subject, data, what=f"a {event.kind} event"):
            self._metrics.events.inc(event.kind)

    async def watch_containers(
        self,
        engine: Engine,
        calls: EngineCalls,
        *,
        reachable: Callable[[], bool],
        closed: Callable[[], bool],
        changed: Callable[[], None] | None = None,
    ) -> None:
        """Publish the engine's container events; watch again when the engine comes back.

        ``changed`` is told of every event (the heartbeat samples the containers again).

        After a broken watch, the engine is asked for the events since the last one
        published (or since the watch began), so a short break loses nothing the
        engine still holds; events already published are not published twice.
        """
        last_nano = 0
        since: float | None = None
        identity = self._identity
        while not closed():
            if not reachable():
                await asyncio.sleep(EVENTS_RETRY)
                continue
            began = time.time()
            try:
                engine_stream = await calls.run(engine.container_events, since)
            except ShoalError as exc:
                log.debug("cannot watch container events: %s", exc.message)
                await asyncio.sleep(EVENTS_RETRY)
                continue
            async with ThreadedStream(engine_stream, name="shoal-events") as stream:
                while True:
                    try:
                        records = await stream.batch(60.0)
                    except StreamClosed:
                        break
                    for record in records:
                        if record.time_nano <= last_nano:
                            continue  # replayed after a broken watch
                        last_nano = record.time_nano
                        await self.publish_event(
                            container_event(identity.host_id, identity.instance, record)
                        )
                        if changed is not None:
                            changed()
            if stream.error is not None and not closed():
                log.info("container events watch ended: %s", stream.error)
            since = last_nano / 1e9 if last_nano else began
            await asyncio.sleep(EVENTS_RETRY if stream.error is not None else 1.0)

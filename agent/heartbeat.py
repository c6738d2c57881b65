"""This host's facts, whether its engine answers, the heartbeat and the health file."""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from shoal.protocol import (
    PROTOCOL_VERSION,
    AgentFacts,
    DockerFacts,
    EventKind,
    HostStats,
    PsArgs,
    ServiceBeat,
    ShoalError,
    Subjects,
    normalize_arch,
    sanitize_host_id,
    utcnow,
)

from .calls import EngineCalls
from .config import AgentSettings
from .connection import AgentConnection
from .engine import Engine, EngineInfo
from .events import Events
from .health import Health, write_health
from .identity import Identity

log = logging.getLogger("shoal.agent")

USAGE_EVERY = 30.0
"""Seconds between samples of the containers' CPU and memory carried by heartbeats."""
USAGE_TIMEOUT = 20.0

ENGINE_PROBE_TIMEOUT = 5.0


class Heartbeat:
    """Keeps this host's facts current and publishes them, and the health file, on a beat."""

    def __init__(
        self,
        settings: AgentSettings,
        identity: Identity,
        engine: Engine,
        calls: EngineCalls,
        connection: AgentConnection,
        events: Events,
        subjects: Subjects,
        *,
        insecure: bool,
    ) -> None:
        self._settings = settings
        self._identity = identity
        self._engine = engine
        self._calls = calls
        self._connection = connection
        self._events = events
        self._subjects = subjects
        self._insecure = insecure
        self.engine_info: EngineInfo | None = None
        self.docker = DockerFacts(reachable=False, error="not probed yet")
        self.box_key: str | None = None
        """The public half of this host's box key, once the files directory is open."""
        self.health_file: Path | None = None
        self.services: list[ServiceBeat] = []
        """The services this host runs, as the last heartbeat told them."""
        self.service_source: Callable[[], Awaitable[list[ServiceBeat]]] | None = None
        """Reads the services' state (set by the agent once its service store is open)."""
        self.usage: HostStats | None = None
        self.usage_at: datetime | None = None
        self.upgrade_failed: str | None = None
        self.published = 0
        """Heartbeats handed to NATS so far."""
        """Why the last upgrade of this agent was put back (agent/venvs.py)."""
        self.containers: int | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._sampled = 0.0

    async def probe_engine(self) -> None:
        """Refresh Docker reachability, publishing an event when it changes."""
        was = self.docker.reachable
        try:
            if self.engine_info is None or not was:
                self.engine_info = await self._calls.run(
                    self._engine.info, timeout=ENGINE_PROBE_TIMEOUT
                )
            else:
                await self._calls.run(self._engine.ping, timeout=ENGINE_PROBE_TIMEOUT)
        except ShoalError as exc:
            self.docker = DockerFacts(reachable=False, error=exc.message)
            if was:
                log.warning("Docker engine lost: %s", exc.message)
                await self._events.publish(EventKind.ENGINE_LOST, exc.message)
            return
        info = self.engine_info
        self.docker = DockerFacts(
            reachable=True, version=info.version, api_version=info.api_version
        )
        if not was and self._connection.is_open:
            log.info("Docker engine reachable (version %s)", info.version)
            await self._events.publish(EventKind.ENGINE_REGAINED, f"Docker {info.version}")

    def default_host_id(self) -> str:
        """The engine's host name, else this machine's, as a valid host id."""
        if self.engine_info is not None and self.engine_info.name:
            return sanitize_host_id(self.engine_info.name)
        name = socket.gethostname()
        log.warning(
            "Docker engine unreachable; using the local host name %r as host id "
            "(set --host-id to pin it)",
            name,
        )
        return sanitize_host_id(name)

    def facts(self, status: str = "online") -> AgentFacts:
        info = self.engine_info
        arch, variant = normalize_arch(info.arch if info and info.arch else platform.machine())
        identity = self._identity
        return AgentFacts(
            host_id=identity.host_id,
            instance=identity.instance,
            status="leaving" if status == "leaving" else "online",
            labels=dict(self._settings.labels),
            arch=arch,
            variant=variant,
            os=(info.os if info and info.os else platform.system().lower()),
            kernel=(info.kernel if info and info.kernel else platform.release()),
            hostname=socket.gethostname(),
            docker=self.docker,
            agent_version=identity.version,
            protocol_version=PROTOCOL_VERSION,
            started_at=identity.started_at,
            sent_at=utcnow(),
            heartbeat_interval=self._settings.heartbeat_interval,
            insecure=self._insecure,
            box_key=self.box_key,
            services=list(self.services),
            containers=self.containers,
            usage=self.usage,
            usage_at=self.usage_at,
            upgrade_failed=self.upgrade_failed,
        )

    async def current_facts(self) -> AgentFacts:
        await self.probe_engine()
        return self.facts()

    def write_health(self, status: str) -> None:
        if self.health_file is None:
            return
        try:
            write_health(
                self.health_file,
                Health(
                    host_id=self._identity.host_id,
                    connected=self._connection.is_connected,
                    docker_reachable=self.docker.reachable,
                    status=status,
                    updated_at=utcnow(),
                    heartbeat_interval=self._settings.heartbeat_interval,
                ),
            )
        except OSError as exc:
            log.warning("cannot write the health file %s: %s", self.health_file, exc)

    async def refresh_services(self) -> None:
        """Read the services' state for the next heartbeat (kept as it was on an error)."""
        if self.service_source is None or not self.docker.reachable:
            return
        try:
            self.services = await self.service_source()
        except ShoalError as exc:
            log.debug("cannot read the services for the heartbeat: %s", exc.message)
        except Exception:  # a heartbeat goes out whatever the engine did
            log.exception("cannot read the services for the heartbeat")

    def containers_changed(self) -> None:
        """A container event: sample again at the next heartbeat (not at every event)."""
        self._sampled = min(self._sampled, time.monotonic() - USAGE_EVERY + 1.0)

    def sample_usage(self) -> None:
        """Start a sample of the containers' CPU and memory, at most every USAGE_EVERY."""
        now = time.monotonic()
        busy = self._sampling is not None and not self._sampling.done()
        if busy or not self.docker.reachable or now - self._sampled < USAGE_EVERY:
            return
        self._sampled = now
        self._sampling = asyncio.create_task(self._sample(), name="usage-sample")

    async def _sample(self) -> None:
        try:
            stats = await self._calls.run(self._engine.container_stats, timeout=USAGE_TIMEOUT)
            every = await self._calls.run(self._engine.list_containers, PsArgs(all=True))
        except ShoalError as exc:
            log.debug("cannot sample the containers' usage: %s", exc.message)
            return
        except Exception:  # the heartbeat goes on without a sample
            log.exception("cannot sample the containers' usage")
            return
        self.usage, self.usage_at, self.containers = stats.host, utcnow(), len(every)
        if self._connection.is_open:
            await self.publish()  # the fresh sample now, not a heartbeat later

    async def publish(self, status: str = "online") -> None:
        """One heartbeat: the health file, then the facts on this host's heartbeat subject."""
        if status == "online":
            await self.refresh_services()
        self.write_health(status)
        if await self._connection.publish(
            self._subjects.heartbeat(self._identity.host_id),
            self.facts(status).model_dump_json().encode(),
            what="a heartbeat",
        ):
            self.published += 1

    async def run(self, housekeeping: Callable[[], Awaitable[None]]) -> None:
        """Probe, beat and keep house every heartbeat interval, until cancelled."""
        interval = self._settings.heartbeat_interval
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.probe_engine()
                    self.sample_usage()
                    await self.publish()
                    await housekeeping()
                except OSError as exc:
                    log.warning("heartbeat failed: %s", exc)
        finally:
            if self._sampling is not None:
                self._sampling.cancel()

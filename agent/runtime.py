"""The agent runtime: one NATS connection, request dispatch, heartbeats.

A NATS callback never blocks: each request becomes its own task, bounded by a
concurrency limit and a queue limit, and every engine call runs in a bounded
thread pool with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from shoal.protocol import (
    PROTOCOL_VERSION,
    VERBS,
    AgentEvent,
    AgentFacts,
    AuditRecord,
    BadRequest,
    Busy,
    DockerFacts,
    EventKind,
    Expired,
    OperationTimeout,
    PayloadTooLarge,
    Progress,
    Replayed,
    Reply,
    Request,
    ServiceSpec,
    ShoalError,
    ShuttingDown,
    Subjects,
    Target,
    UnknownVerb,
    Verb,
    decode_request,
    error_reply,
    nkey,
    normalize_arch,
    request_head,
    required_role,
    sanitize_host_id,
    utcnow,
)
from shoal.protocol.chunks import MAX_REPLY_BYTES, split_reply
from shoal.protocol.connection import describe_tls_error, flush_in_order, is_auth_error
from shoal.protocol.envelope import (
    UNKNOWN_REQUEST_ID,
    decode_request_document,
    summarize_validation_error,
)
from shoal.protocol.signing import Forbidden, Unauthorized, verify_document

from .audit import log_record, redact
from .config import AgentSettings
from .docker import DockerEngine
from .engine import Engine, EngineInfo
from .health import Health, write_health
from .journal import JournalEntry, RequestJournal
from .metrics import AgentMetrics, MetricsServer, MetricsServerError
from .store import ServiceStore
from .streams import StreamClosed, ThreadedStream, container_event
from .trust import TrustEntry, TrustError, TrustStore

if TYPE_CHECKING:
    # Loaded on first use, not by an idle agent: the request handlers, deploys,
    # prune rules and the policy (see tests/unit/test_agent_imports.py).
    from .deploy import Deployer
    from .handlers import RequestContext
    from .policy import Policy
    from .prune import KeepRules

log = logging.getLogger("shoal.agent")
T = TypeVar("T")

ENGINE_PROBE_TIMEOUT = 5.0
EVENTS_RETRY = 2.0
"""Seconds between attempts to (re)open the engine's event stream."""
DUPLICATE_CHECK_TIMEOUT = 2.0


class AgentStartError(Exception):
    """The agent cannot start (bad configuration, host id already in use, …)."""


class AgentConfigError(AgentStartError):
    """The agent's configuration is incomplete or contradictory (a usage error)."""


class AgentStopped(AgentStartError):
    """The agent was asked to stop before it had started."""


@dataclass(slots=True)
class Caller:
    """Who sent a request, as far as it is known (filled in while admitting it)."""

    signer: TrustEntry | None = None
    key: str | None = None
    request: Request | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """A request that passed every check, with who sent it."""

    request: Request
    verb: Verb
    args: BaseModel
    signer: TrustEntry | None
    key: str | None


class Agent:
    """A Shoal agent for one host. Use as an async context manager, or start()/stop()."""

    def __init__(
        self,
        settings: AgentSettings,
        engine: Engine | None = None,
        *,
        version: str = "0.1.0",
    ) -> None:
        self.settings = settings
        self.engine: Engine = engine or DockerEngine(
            settings.docker_host,
            timeout=settings.docker_timeout,
            long_timeout=settings.long_timeout,
        )
        self.subjects = Subjects(settings.prefix)
        self.version = version
        self.instance = uuid.uuid4().hex
        self.started_at = utcnow()
        self.host_id: str = settings.host_id or ""
        self._executor = ThreadPoolExecutor(
            max_workers=settings.concurrency + 2, thread_name_prefix="shoal-engine"
        )
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._pending = 0
        self._accepting = False
        self._closed = False
        self._stop_requested = asyncio.Event()
        self._connect_refused = asyncio.Event()
        self._fatal_connect_error = ""
        self._connect_failures = 0
        self._engine_info: EngineInfo | None = None
        self._docker = DockerFacts(reachable=False, error="not probed yet")
        self.ready = asyncio.Event()
        self.trust: TrustStore | None = (
            TrustStore(settings.trust) if settings.trust is not None else None
        )
        self.journal = RequestJournal(None)
        self.services = ServiceStore(None)
        self._deployer: Deployer | None = None
        self._policy: Policy | None = None
        self._keep_rules: KeepRules | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._recovered = False
        self.health_file: Path | None = None
        self.long_timeout = settings.long_timeout
        self.metrics = AgentMetrics(
            version=version,
            host_id=lambda: self.host_id,
            in_flight=lambda: self._pending,
            nats_connected=lambda: self._nc is not None and self._nc.is_connected,
            docker_reachable=lambda: self._docker.reachable,
        )
        self.metrics_server: MetricsServer | None = None
        self._events_task: asyncio.Task[None] | None = None

    @property
    def deployer(self) -> Deployer:
        """Deploys, rollbacks and services of this host (loaded on first use)."""
        if self._deployer is None:
            from .deploy import Deployer

            self._deployer = Deployer(self, self.services)
        return self._deployer

    @property
    def policy(self) -> Policy:
        """What this host allows: the policy file's, else the default (loaded on first use)."""
        if self._policy is None:
            from .policy import Policy

            self._policy = Policy.default()
        return self._policy

    @property
    def keep_rules(self) -> KeepRules:
        """What a prune keeps (loaded on first use)."""
        if self._keep_rules is None:
            from .prune import KeepRules

            self._keep_rules = KeepRules(
                images=self.settings.prune_keep_images,
                containers=self.settings.prune_keep_containers,
            )
        return self._keep_rules

    # --- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Probe the engine, connect to NATS, refuse a duplicate host id, subscribe."""
        if self.trust is None and not self.settings.insecure:
            raise AgentConfigError(
                "no trust file: give --trust FILE (env SHOAL_TRUST) listing the keys allowed "
                "to send requests, or --insecure to accept unsigned requests from anyone"
            )
        if self.trust is not None:
            try:
                self.trust.load()
            except TrustError as exc:
                raise AgentStartError(str(exc)) from exc
        if self.settings.policy is not None:
            from .policy import PolicyError, load_policy

            try:
                self._policy = load_policy(self.settings.policy)
            except PolicyError as exc:
                raise AgentStartError(str(exc)) from exc
        if self.settings.metrics_port is not None:
            server = MetricsServer(
                self.metrics.render, self.settings.metrics_address, self.settings.metrics_port
            )
            try:
                await server.start()
            except MetricsServerError as exc:
                raise AgentStartError(str(exc)) from exc
            self.metrics_server = server
        await self._probe_engine()
        if not self.host_id:
            self.host_id = self._default_host_id()
        log.info(
            "agent %s starting (instance %s, ed25519 by %s, event loop %s)",
            self.host_id,
            self.instance,
            nkey.backend.name,
            "uvloop"
            if type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            else "asyncio",
        )
        if self.trust is None:
            log.warning(
                "INSECURE MODE: this agent accepts UNSIGNED requests from anyone who can "
                "publish to its NATS subjects; give it a trust file (--trust) in production"
            )
        state_dir = self.settings.resolved_state_dir(self.host_id)
        self.journal = RequestJournal(state_dir / "requests.jsonl" if state_dir else None)
        self.services = ServiceStore(state_dir / "services" if state_dir else None)
        self._deployer = None  # deploys with the store in the state directory from now on
        self.health_file = self.settings.health_file or (
            state_dir / "health.json" if state_dir else None
        )
        await self._recover_services()  # before taking requests
        try:
            self.journal.load(utcnow())
        except OSError as exc:
            raise AgentStartError(f"cannot use state directory {state_dir}: {exc}") from exc
        self._nc = await self._connect()
        await self._refuse_duplicate()
        self._accepting = True
        nc = self._nc
        for subject in (
            self.subjects.host_all_verbs(self.host_id),
            self.subjects.broadcast_all_verbs(),
        ):
            self._subs.append(
                await nc.subscribe(
                    subject,
                    cb=self._on_request,
                    pending_msgs_limit=100_000,
                    pending_bytes_limit=256 * 1024 * 1024,
                )
            )
        await flush_in_order(nc)  # ready means requests reach it
        await self._publish_heartbeat()
        await self._publish_event(EventKind.STARTED, f"agent {self.version} started")
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        if hasattr(self.engine, "container_events"):  # in-memory test engines have none
            self._events_task = asyncio.create_task(
                self._watch_container_events(), name="container-events"
            )
        self.ready.set()
        log.info(
            "agent %s ready on %s (docker %s)",
            self.host_id,
            nc.connected_url.netloc if nc.connected_url else "?",
            "reachable" if self._docker.reachable else "UNREACHABLE",
        )

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for: long-running handlers wind up."""
        return self._stop_requested.is_set()

    @asynccontextmanager
    async def outside_request_slot(self) -> AsyncIterator[None]:
        """Give the calling request's slot back while in the block, and take one again
        after it: for requests that mostly wait (a followed log), so that they never
        hold up the others. The caller bounds how many do this at once."""
        self._slots.release()
        try:
            yield
        finally:
            await self._slots.acquire()

    async def serve_forever(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        """Stop taking requests, finish those in flight (bounded), say goodbye, close.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._stop_requested.set()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("unsubscribe failed: %s", exc)
        self._subs.clear()
        if self._tasks:
            log.info("waiting for %d request(s) in flight", len(self._tasks))
            _, still = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_grace or None
            )
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
        nc = self._nc
        if nc is not None and nc.is_connected:
            try:
                await self._publish_event(EventKind.STOPPING, "agent stopping")
                await self._publish_heartbeat(status="leaving")
                await nc.flush(timeout=2)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("could not announce leaving: %s", exc)
        if nc is not None and not nc.is_closed:
            try:
                async with asyncio.timeout(5):
                    await nc.close()
            except (nats.errors.Error, OSError, RuntimeError, TimeoutError) as exc:
                # NATS may be down while we stop: pending data is lost, the exit stays clean.
                log.warning("closing the NATS connection: %s", exc or type(exc).__name__)
        self.journal.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("agent %s stopped", self.host_id)

    # --- NATS -------------------------------------------------------------------

    async def _connect(self) -> NATS:
        """Connect, retrying forever, until connected, refused, or asked to stop."""
        options = self.settings.nats_options(self.host_id)
        self._connect_refused.clear()
        connecting = asyncio.create_task(
            nats.connect(
                **options.connect_kwargs(),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1.0,
                connect_timeout=3,
                inbox_prefix=self.subjects.agent_inbox_prefix(self.host_id),
                ping_interval=2,
                max_outstanding_pings=2,
                error_cb=self._on_nats_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            ),
            name="nats-connect",
        )
        stopping = asyncio.create_task(self._stop_requested.wait())
        refused = asyncio.create_task(self._connect_refused.wait())
        await asyncio.wait({connecting, stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, refused):
            task.cancel()
        if connecting.done() and not connecting.cancelled():
            self._connect_failures = 0
            return connecting.result()
        connecting.cancel()
        await asyncio.gather(connecting, stopping, refused, return_exceptions=True)
        if self._connect_refused.is_set():
            raise AgentStartError(
                f"NATS at {', '.join(options.servers)} {self._fatal_connect_error}"
            )
        raise AgentStopped("stopped before NATS was reachable")

    async def _on_nats_error(self, exc: Exception) -> None:
        connected = self._nc is not None and self._nc.is_connected
        if self._nc is None and (is_auth_error(exc) or isinstance(exc, ssl.SSLError)):
            # Permanent until the configuration changes: stop instead of retrying forever.
            if isinstance(exc, ssl.SSLError):
                self._fatal_connect_error = f"failed TLS: {describe_tls_error(exc)} (check --tlsca)"
            else:
                self._fatal_connect_error = "refused this agent's credentials"
            self._connect_refused.set()
            return
        self._connect_failures += 1
        if connected or self._connect_failures in (1, 10) or self._connect_failures % 60 == 0:
            servers = ", ".join(self.settings.servers)
            log.warning("NATS (%s): %s", servers, exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            self.metrics.disconnects.inc()
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        url = nc.connected_url.netloc if nc and nc.connected_url else "?"
        log.info("reconnected to NATS at %s", url)
        self.metrics.reconnects.inc()
        if self._accepting:
            asyncio.create_task(self._publish_heartbeat())  # noqa: RUF006 - fire and forget

    async def _refuse_duplicate(self) -> None:
        """Refuse to start if a live agent already answers for this host id."""
        assert self._nc is not None
        probe = Request(
            verb=Verb.PING,
            target=Target(host=self.host_id),
            sender=f"agent:{self.instance}",
            ttl=10,
        )
        try:
            msg = await self._nc.request(
                self.subjects.host(self.host_id, Verb.PING),
                probe.model_dump_json().encode(),
                timeout=DUPLICATE_CHECK_TIMEOUT,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return
        other = "another agent"
        try:
            reply = Reply.model_validate_json(msg.data)
            if reply.ok and reply.result:
                facts = AgentFacts.model_validate(reply.result)
                other = (
                    f"agent instance {facts.instance} on {facts.hostname or '?'} "
                    f"(started {facts.started_at.isoformat(timespec='seconds')})"
                )
        except ValidationError:
            pass
        await self._nc.close()
        raise AgentStartError(
            f"host id {self.host_id!r} is already served by {other}; "
            "stop it first or give this agent another --host-id"
        )

    # --- engine -----------------------------------------------------------------

    async def in_engine(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run a blocking engine call in the pool, with a time limit."""
        limit = timeout if timeout is not None else self.settings.docker_timeout
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError as exc:
            raise OperationTimeout(f"the Docker engine did not answer within {limit:g}s") from exc

    async def _probe_engine(self) -> None:
        """Refresh Docker reachability, publishing an event when it changes."""
        was = self._docker.reachable
        try:
            if self._engine_info is None or not was:
                self._engine_info = await self.in_engine(
                    self.engine.info, timeout=ENGINE_PROBE_TIMEOUT
                )
            else:
                await self.in_engine(self.engine.ping, timeout=ENGINE_PROBE_TIMEOUT)
        except ShoalError as exc:
            self._docker = DockerFacts(reachable=False, error=exc.message)
            if was:
                log.warning("Docker engine lost: %s", exc.message)
                await self._publish_event(EventKind.ENGINE_LOST, exc.message)
            return
        info = self._engine_info
        self._docker = DockerFacts(
            reachable=True, version=info.version, api_version=info.api_version
        )
        if not was and self._nc is not None:
            log.info("Docker engine reachable (version %s)", info.version)
            await self._publish_event(EventKind.ENGINE_REGAINED, f"Docker {info.version}")

    def _default_host_id(self) -> str:
        if self._engine_info is not None and self._engine_info.name:
            return sanitize_host_id(self._engine_info.name)
        name = socket.gethostname()
        log.warning(
            "Docker engine unreachable; using the local host name %r as host id "
            "(set --host-id to pin it)",
            name,
        )
        return sanitize_host_id(name)

    # --- facts, heartbeats, events -----------------------------------------------

    def facts(self, status: str = "online") -> AgentFacts:
        info = self._engine_info
        arch, variant = normalize_arch(info.arch if info and info.arch else platform.machine())
        return AgentFacts(
            host_id=self.host_id,
            instance=self.instance,
            status="leaving" if status == "leaving" else "online",
            labels=dict(self.settings.labels),
            arch=arch,
            variant=variant,
            os=(info.os if info and info.os else platform.system().lower()),
            kernel=(info.kernel if info and info.kernel else platform.release()),
            hostname=socket.gethostname(),
            docker=self._docker,
            agent_version=self.version,
            protocol_version=PROTOCOL_VERSION,
            started_at=self.started_at,
            sent_at=utcnow(),
            heartbeat_interval=self.settings.heartbeat_interval,
            insecure=self.trust is None,
        )

    async def current_facts(self) -> AgentFacts:
        await self._probe_engine()
        return self.facts()

    def _write_health(self, status: str) -> None:
        if self.health_file is None:
            return
        try:
            write_health(
                self.health_file,
                Health(
                    host_id=self.host_id,
                    connected=self._nc is not None and self._nc.is_connected,
                    docker_reachable=self._docker.reachable,
                    status=status,
                    updated_at=utcnow(),
                    heartbeat_interval=self.settings.heartbeat_interval,
                ),
            )
        except OSError as exc:
            log.warning("cannot write the health file %s: %s", self.health_file, exc)

    async def _publish_heartbeat(self, status: str = "online") -> None:
        self._write_health(status)
        if self._nc is None or self._nc.is_closed:
            return
        await self._nc.publish(
            self.subjects.heartbeat(self.host_id), self.facts(status).model_dump_json().encode()
        )

    async def _publish_event(self, kind: EventKind, message: str = "") -> None:
        event = AgentEvent(
            host_id=self.host_id, instance=self.instance, kind=kind, at=utcnow(), message=message
        )
        await self._publish_agent_event(event)

    async def _publish_agent_event(self, event: AgentEvent) -> None:
        if self._nc is None or self._nc.is_closed:
            return
        await self._nc.publish(
            self.subjects.event(self.host_id, event.kind), event.model_dump_json().encode()
        )
        self.metrics.events.inc(event.kind)

    async def _watch_container_events(self) -> None:
        """Publish the engine's container events; watch again when the engine comes back.

        After a broken watch, the engine is asked for the events since the last one
        published (or since the watch began), so a short break loses nothing the
        engine still holds; events already published are not published twice.
        """
        last_nano = 0
        since: float | None = None
        while not self._closed:
            if not self._docker.reachable:
                await asyncio.sleep(EVENTS_RETRY)
                continue
            began = time.time()
            try:
                engine_stream = await self.in_engine(self.engine.container_events, since)
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
                        try:
                            await self._publish_agent_event(container_event(self, record))
                        except (nats.errors.Error, OSError) as exc:
                            log.warning("could not publish a container event: %s", exc)
            if stream.error is not None and not self._closed:
                log.info("container events watch ended: %s", stream.error)
            since = last_nano / 1e9 if last_nano else began
            await asyncio.sleep(EVENTS_RETRY if stream.error is not None else 1.0)

    async def _recover_services(self) -> None:
        """Converge services left mid-operation by a crash (needs the engine)."""
        if not self._docker.reachable:
            self._recovered = False
            return
        if not self.services.names():
            self._recovered = True  # nothing to converge: the deploy machinery stays unloaded
            return
        try:
            await self.deployer.recover()
            self._recovered = True
        except ShoalError as exc:
            log.error("service recovery failed (%s); retrying later", exc.message)
            self._recovered = False

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a fire-and-forget task until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def check_policy(self, spec: ServiceSpec) -> None:
        """Refuse (policy_denied) a service this host's policy does not allow."""
        from .policy import check_service

        check_service(self.policy, spec)

    def check_image_policy(self, image: str) -> None:
        from .policy import check_image

        check_image(self.policy, image)

    def reload_trust(self) -> None:
        """Reload the trust file now (SIGHUP)."""
        if self.trust is not None and self.trust.reload_if_changed(force=True):
            log.info("trust reloaded on request")

    def _housekeeping(self) -> None:
        if self.trust is not None:
            self.trust.reload_if_changed()
        if self.journal.needs_compaction():
            self.journal.compact(utcnow())

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._probe_engine()
                await self._publish_heartbeat()
                self._housekeeping()
                if not self._recovered:
                    await self._recover_services()
            except (nats.errors.Error, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- requests ---------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        """NATS callback: never blocks; schedules the request as its own task."""
        refusal: ShoalError | None = None
        limit = self.settings.concurrency + self.settings.queue_limit
        if not self._accepting:
            refusal = ShuttingDown("the agent is shutting down")
        elif self._pending >= limit:
            refusal = Busy(f"the agent has {self._pending} requests queued or running")
        if refusal is not None:
            if self._is_for_me(msg):
                self.metrics.observe_request(self._verb_label(msg, None), str(refusal.code), 0.0)
                await self._reply_refusal(msg, refusal)
            return
        self._pending += 1
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _is_for_me(self, msg: Msg) -> bool:
        """A direct request is; a broadcast only if its selector matches this host."""
        verb = self.subjects.verb_of(msg.subject)
        if msg.subject != self.subjects.broadcast(verb):
            return True
        try:
            request = decode_request(msg.data)
        except ShoalError:
            return False
        return request.target.matches(self.host_id, self.facts().selectable())

    async def _reply_refusal(self, msg: Msg, exc: ShoalError) -> None:
        _, request_id = request_head(msg.data)
        reply = error_reply(
            request_id or UNKNOWN_REQUEST_ID, self.host_id, exc, started_at=utcnow()
        )
        await self._send(msg.reply, reply)

    async def _serve(self, msg: Msg) -> None:
        from .handlers import HANDLERS, RequestContext  # loaded by the first request

        started_at = utcnow()
        t0 = time.monotonic()
        admission: Admission | None = None
        caller = Caller()
        try:
            try:
                admission = self._admit(msg, caller)
                if admission is None:
                    return  # a broadcast for other hosts
                async with self._slots:
                    ctx = RequestContext(self, admission.request, msg.reply)
                    result = await HANDLERS[admission.verb](ctx, admission.args)
                reply = Reply(
                    id=admission.request.id,
                    host=self.host_id,
                    ok=True,
                    result=result.model_dump(mode="json"),
                    started_at=started_at,
                    duration=time.monotonic() - t0,
                )
            except ShoalError as exc:
                reply = self._failure(msg, admission, exc, started_at, t0)
            except Exception:
                log.exception("internal error serving a request on %s", msg.subject)
                failure = ShoalError("internal agent error; see the agent's log")
                reply = self._failure(msg, admission, failure, started_at, t0)
            outcome = "ok" if reply.error is None else str(reply.error.code)
            self.metrics.observe_request(self._verb_label(msg, admission), outcome, reply.duration)
            await self._conclude(msg, admission, caller, reply)
            await self._send(msg.reply, reply)
        finally:
            self._pending -= 1

    def _verb_label(self, msg: Msg, admission: Admission | None) -> str:
        """The verb for metrics: a known verb, else "unknown" (senders choose subjects)."""
        if admission is not None:
            return str(admission.verb)
        token = self.subjects.verb_of(msg.subject)
        return token if token in VERBS else "unknown"

    def _failure(
        self,
        msg: Msg,
        admission: Admission | None,
        exc: ShoalError,
        started_at: datetime,
        t0: float,
    ) -> Reply:
        request_id = (
            admission.request.id
            if admission is not None
            else request_head(msg.data)[1] or UNKNOWN_REQUEST_ID
        )
        log.info("request %s refused or failed: %s: %s", request_id, exc.code, exc.message)
        return error_reply(
            request_id, self.host_id, exc, started_at=started_at, duration=time.monotonic() - t0
        )

    async def _conclude(
        self, msg: Msg, admission: Admission | None, caller: Caller, reply: Reply
    ) -> None:
        """Journal the outcome and write the audit record of this decision."""
        error = reply.error
        code = str(error.code) if error is not None else None
        if admission is not None:
            self.journal.finish(
                admission.request.id,
                utcnow(),
                ok=reply.ok,
                code=code,
                message=error.message if error is not None else None,
            )
        request, signer = caller.request, caller.signer
        record = AuditRecord(
            at=utcnow(),
            host=self.host_id,
            request_id=reply.id,
            verb=request.verb if request is not None else self.subjects.verb_of(msg.subject)[:32],
            sender=request.sender if request is not None else "",
            signer=signer.name if signer is not None else None,
            key=caller.key,
            role=str(signer.role) if signer is not None else None,
            decision="accepted" if admission is not None else "refused",
            code=code,
            reason=error.message[:500] if error is not None else "",
            outcome=("ok" if reply.ok else "error") if admission is not None else None,
            duration=round(reply.duration, 6),
            args=redact(request.args) if request is not None else {},
        )
        log_record(record)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.publish(
                    self.subjects.audit(self.host_id), record.model_dump_json().encode()
                )
            except (nats.errors.Error, OSError) as exc:
                log.warning("could not publish an audit record: %s", exc)

    def _admit(self, msg: Msg, caller: Caller) -> Admission | None:
        """Decide whether to run a request. Every check here refuses with a typed error.

        Order: shape, subject and target, signature and trust, time window,
        verb and arguments, role, then the journal (at most once per host).
        """
        request, document = decode_request_document(msg.data)
        caller.request = request
        verb_token = self.subjects.verb_of(msg.subject)
        if request.verb != verb_token:
            raise BadRequest(
                f"request verb {request.verb!r} does not match subject verb {verb_token!r}"
            )
        if msg.subject == self.subjects.broadcast(verb_token):
            if request.target.selector is None:
                raise BadRequest("a broadcast request must carry a selector")
            if not request.target.matches(self.host_id, self.facts().selectable()):
                return None
        elif request.target.host != self.host_id:
            raise BadRequest(
                f"request for host {request.target.host!r} arrived at {self.host_id!r}"
            )
        signer, key = self._authenticate(document, caller)
        self._check_window(request)
        try:
            verb = Verb(request.verb)
        except ValueError:
            raise UnknownVerb(
                f"unknown verb {request.verb!r}",
                detail={"known": sorted(str(v) for v in VERBS)},
            ) from None
        try:
            args = VERBS[verb].args.model_validate(request.args)
        except ValidationError as exc:
            raise BadRequest(
                f"invalid arguments for {verb}: {summarize_validation_error(exc)}"
            ) from exc
        needed = required_role(verb, args)
        if signer is not None and not signer.role.allows(needed):
            raise Forbidden(
                f"key {signer.name!r} has role {signer.role}; {verb} here needs {needed}",
                detail={"role": str(signer.role), "needed": str(needed)},
            )
        earlier = self.journal.get(request.id)
        if earlier is not None:
            raise Replayed(
                f"request {request.id} was already received ({earlier.state}); "
                "a request runs at most once",
                detail={"state": earlier.state, "ok": earlier.ok},
            )
        skew = timedelta(seconds=self.settings.max_clock_skew)
        self.journal.start(
            JournalEntry(
                id=request.id,
                verb=str(verb),
                expires=request.expires_at + skew,
                state="running",
                started_at=utcnow(),
            ),
            durable=VERBS[verb].mutating,
        )
        return Admission(request, verb, args, signer, key)

    def _authenticate(
        self, document: dict[str, Any], caller: Caller
    ) -> tuple[TrustEntry | None, str | None]:
        """The trusted signer of a request; (None, None) on an insecure agent."""
        if self.trust is None:
            return None, None
        key = verify_document(document)
        caller.key = key
        entry = self.trust.lookup(key)
        caller.signer = entry
        if entry is None:
            raise Unauthorized(
                f"key {key} is not trusted by host {self.host_id}",
                detail={"key": key},
            )
        return entry, key

    def _check_window(self, request: Request) -> None:
        now = utcnow()
        allowed = self.settings.max_clock_skew
        skew = timedelta(seconds=allowed)
        if now > request.expires_at + skew:
            late = (now - request.expires_at).total_seconds()
            raise Expired(
                f"request expired {late:.0f}s ago (issued {request.issued_at.isoformat()}, "
                f"ttl {request.ttl:g}s, this host's clock {now.isoformat(timespec='seconds')}, "
                f"allowed clock skew {allowed:g}s)",
                detail={
                    "expires_at": request.expires_at.isoformat(),
                    "agent_time": now.isoformat(),
                },
            )
        if request.issued_at > now + skew:
            ahead = (request.issued_at - now).total_seconds()
            raise Expired(
                f"request issued {ahead:.0f}s in the future by this host's clock "
                f"({now.isoformat(timespec='seconds')}); allowed clock skew {allowed:g}s: "
                "check the clocks",
                detail={"issued_at": request.issued_at.isoformat(), "agent_time": now.isoformat()},
            )

    async def send_progress(
        self,
        ctx: RequestContext,
        phase: str,
        message: str,
        *,
        seq: int,
        current: float | None,
        total: float | None,
    ) -> None:
        progress = Progress(
            id=ctx.request.id,
            host=self.host_id,
            seq=seq,
            phase=phase,
            message=message,
            current=current,
            total=total,
        )
        await self._send(ctx.reply_to, progress)

    async def _send(self, reply_to: str | None, message: BaseModel) -> None:
        if not reply_to or self._nc is None or self._nc.is_closed:
            return
        data = message.model_dump_json().encode()
        limit = self._nc.max_payload
        if len(data) > limit and isinstance(message, Reply) and len(data) <= MAX_REPLY_BYTES:
            try:
                for headers, part in split_reply(data, limit):
                    await self._nc.publish(reply_to, part, headers=headers)
            except (nats.errors.Error, OSError) as error:
                log.warning("could not send a chunked reply to %s: %s", reply_to, error)
            return
        if len(data) > limit and isinstance(message, Reply):
            exc = PayloadTooLarge(
                f"the reply of {len(data)} bytes exceeds the limit of {MAX_REPLY_BYTES} bytes",
                detail={"size": len(data), "limit": MAX_REPLY_BYTES},
            )
            data = (
                error_reply(
                    message.id,
                    self.host_id,
                    exc,
                    started_at=message.started_at,
                    duration=message.duration,
                )
                .model_dump_json()
                .encode()
            )
        try:
            await self._nc.publish(reply_to, data)
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not send reply to %s: %s", reply_to, exc)


__all__ = ["Agent", "AgentConfigError", "AgentStartError", "AgentStopped"]

"""The agent's lifecycle: compose its parts, dispatch requests, stop cleanly.

A NATS callback never blocks: each request becomes its own task, bounded by a
concurrency limit and a queue limit. The parts live in their own modules:
connection (NATS), admission (the checks), replies, heartbeat (facts, health file),
events, calls (the engine's thread pool) and context (what handlers get).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from pydantic import BaseModel

from shoal.protocol import (
    AgentFacts,
    Busy,
    EventKind,
    Reply,
    ServiceBeat,
    ShoalError,
    ShuttingDown,
    Subjects,
    nkey,
    utcnow,
)

from .admission import Admission, Caller, Gate, admit, is_for_host, verb_label
from .audit import audit_record, log_record
from .calls import EngineCalls
from .config import AgentSettings
from .connection import AgentConnection, Incoming
from .context import HostContext, RequestContext
from .docker import DockerEngine
from .engine import Engine
from .errors import AgentConfigError, AgentStartError, AgentStopped
from .events import Events
from .files import FileStore
from .heartbeat import Heartbeat
from .identity import Identity
from .journal import RequestJournal
from .locks import ServiceLocks
from .metrics import AgentMetrics, MetricsServer, MetricsServerError
from .replies import encode_message, failure_reply, refusal_reply, reply_outcome, success_reply
from .store import ServiceStore
from .trust import TrustError, TrustStore

if TYPE_CHECKING:
    # Loaded on first use, not by an idle agent: the request handlers, deploys,
    # prune rules and the policy (see tests/unit/test_agent_imports.py).
    from .deploy import Deployer
    from .policy import Policy
    from .prune import KeepRules

log = logging.getLogger("shoal.agent")


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
        self.identity = Identity(
            host_id=settings.host_id or "",
            instance=uuid.uuid4().hex,
            version=version,
            started_at=utcnow(),
        )
        self.calls = EngineCalls(
            settings.concurrency + 2,
            timeout=settings.docker_timeout,
            long_timeout=settings.long_timeout,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._pending = 0
        self._accepting = False
        self._closed = False
        self._stop_requested = asyncio.Event()
        self.restart_requested = False
        """Set by :meth:`request_restart`: the process should exit ``RESTART_EXIT``."""
        self.ready = asyncio.Event()
        self.trust: TrustStore | None = (
            TrustStore(settings.trust) if settings.trust is not None else None
        )
        self.journal = RequestJournal(None)
        self.services = ServiceStore(None)
        self.files = FileStore(None)
        self.locks = ServiceLocks()
        self._deployer: Deployer | None = None
        self._policy: Policy | None = None
        self._keep_rules: KeepRules | None = None
        self._recovered = False
        self._last_announce = 0.0
        self._beat_due: asyncio.Event | None = None
        self.long_timeout = settings.long_timeout
        self.connection = AgentConnection(
            settings,
            self.subjects,
            on_disconnected=self._on_disconnected,
            on_reconnected=self._on_reconnected,
        )
        self.metrics = AgentMetrics(
            version=version,
            host_id=lambda: self.host_id,
            in_flight=lambda: self._pending,
            nats_connected=lambda: self.connection.is_connected,
            docker_reachable=lambda: self.heartbeat.docker.reachable,
        )
        self.metrics_server: MetricsServer | None = None
        self.events = Events(self.connection, self.subjects, self.identity, self.metrics)
        self.heartbeat = Heartbeat(
            settings,
            self.identity,
            self.engine,
            self.calls,
            self.connection,
            self.events,
            self.subjects,
            insecure=self.trust is None,
        )
        self.host = self._host_context()

    @property
    def host_id(self) -> str:
        return self.identity.host_id

    @property
    def instance(self) -> str:
        return self.identity.instance

    @property
    def started_at(self) -> datetime:
        return self.identity.started_at

    @property
    def docker_reachable(self) -> bool:
        return self.heartbeat.docker.reachable

    def facts(self, status: str = "online") -> AgentFacts:
        """What this host announces about itself."""
        return self.heartbeat.facts(status)

    @property
    def deployer(self) -> Deployer:
        """Deploys, rollbacks and services of this host (loaded on first use)."""
        if self._deployer is None:
            from .deploy import Deployer

            self._deployer = Deployer(self.host)
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

    def _host_context(self) -> HostContext:
        """What handlers share, with the current host id, journal and service store."""
        return HostContext(
            host_id=self.host_id,
            instance=self.instance,
            engine=self.engine,
            calls=self.calls,
            journal=self.journal,
            services=self.services,
            locks=self.locks,
            is_stopping=lambda: self.stopping,
            outside_request_slot=self.outside_request_slot,
            keep_task=self.keep_task,
            facts=self.heartbeat.facts,
            current_facts=self.heartbeat.current_facts,
            policy=lambda: self.policy,
            keep_rules=lambda: self.keep_rules,
            files=self.files,
            announce=self._announce,
            services_changed=self._services_changed,
            restart=self.request_restart,
        )

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
        await self._load_configuration()
        await self.heartbeat.probe_engine()
        if not self.host_id:
            self.identity.host_id = self.heartbeat.default_host_id()
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
        self.files = FileStore(self.settings.files_dir or (state_dir / "files"))
        try:
            self.heartbeat.box_key = self.files.load_key()
        except (OSError, ShoalError) as exc:
            raise AgentStartError(f"cannot use the files directory: {exc}") from exc
        if self.heartbeat.box_key is None:
            log.warning("no box key (PyNaCl is not installed): this host cannot take secrets")
        self.host = self._host_context()
        self._deployer = None  # deploys with the store in the state directory from now on
        self.heartbeat.service_source = self._service_beats
        self.heartbeat.health_file = self.settings.health_file or (
            state_dir / "health.json" if state_dir else None
        )
        await self._recover_services()  # before taking requests
        try:
            self.journal.load(utcnow())
        except OSError as exc:
            raise AgentStartError(f"cannot use state directory {state_dir}: {exc}") from exc
        await self.connection.connect(self.host_id, self._stop_requested)
        await self.connection.refuse_duplicate(self.host_id, self.instance)
        self._accepting = True
        for subject in (
            self.subjects.host_all_verbs(self.host_id),
            self.subjects.broadcast_all_verbs(),
        ):
            await self.connection.subscribe(subject, self._on_request)
        await self.connection.flush_in_order()  # ready means requests reach it
        await self.heartbeat.publish()
        await self.events.publish(EventKind.STARTED, f"agent {self.version} started")
        self._heartbeat_task = asyncio.create_task(
            self.heartbeat.run(self._housekeeping), name="heartbeat"
        )
        if hasattr(self.engine, "container_events"):  # in-memory test engines have none
            self._events_task = asyncio.create_task(
                self.events.watch_containers(
                    self.engine,
                    self.calls,
                    reachable=lambda: self.heartbeat.docker.reachable,
                    closed=lambda: self._closed,
                    changed=self.heartbeat.containers_changed,
                ),
                name="container-events",
            )
        self.ready.set()
        log.info(
            "agent %s ready on %s (docker %s)",
            self.host_id,
            self.connection.url,
            "reachable" if self.heartbeat.docker.reachable else "UNREACHABLE",
        )

    async def _load_configuration(self) -> None:
        """Trust, policy and the metrics endpoint: what start refuses to go without."""
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

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (safe from a signal handler)."""
        self._stop_requested.set()

    def request_restart(self, why: str) -> None:
        """Stop as :meth:`request_stop` does, for the process to exit ``RESTART_EXIT``
        (75) afterwards, which the agent's service manager restarts."""
        log.info("restarting: %s", why)
        self.restart_requested = True
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
        await self.connection.unsubscribe_all()
        if self._tasks:
            log.info("waiting for %d request(s) in flight", len(self._tasks))
            _, still = await asyncio.wait(
                set(self._tasks), timeout=self.settings.shutdown_grace or None
            )
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)
        for background in (self._heartbeat_task, self._events_task):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        if self.connection.is_connected:
            await self.events.publish(EventKind.STOPPING, "agent stopping")
            await self.heartbeat.publish(status="leaving")
            if not await self.connection.flush(timeout=2):
                log.warning("could not announce leaving")
        await self.connection.close()
        self.journal.close()
        self.calls.shutdown()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
        if self.metrics_server is not None:
            await self.metrics_server.close()
        log.info("agent %s stopped", self.host_id)

    # --- connection events, housekeeping -------------------------------------------

    def _on_disconnected(self) -> None:
        if not self._closed:
            self.metrics.disconnects.inc()
            log.warning("disconnected from NATS; reconnecting")

    def _on_reconnected(self) -> None:
        self.metrics.reconnects.inc()
        if self._accepting:
            self.keep_task(asyncio.create_task(self.heartbeat.publish()))

    async def _recover_services(self) -> None:
        """Converge services left mid-operation by a crash (needs the engine)."""
        if not self.heartbeat.docker.reachable:
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

    async def _announce(self) -> None:
        """A heartbeat now, so a registry created after this agent started learns of it."""
        now = time.monotonic()
        if now - self._last_announce < 1.0 or not self._accepting:
            return
        self._last_announce = now
        await self.heartbeat.publish()

    def _services_changed(self) -> None:
        """Publish a heartbeat soon; changes while one is being sent ask for one more."""
        if self._beat_due is not None:
            self._beat_due.set()
            return
        due = self._beat_due = asyncio.Event()
        due.set()

        async def beat() -> None:
            try:
                while due.is_set() and self._accepting:
                    due.clear()
                    await self.heartbeat.publish()
            except OSError as exc:
                log.warning("heartbeat after a service change failed: %s", exc)
            finally:
                self._beat_due = None

        self.keep_task(asyncio.create_task(beat()))

    async def _service_beats(self) -> list[ServiceBeat]:
        from .beats import service_beats

        return await service_beats(self.host)

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to a fire-and-forget task until it ends."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def reload_trust(self) -> None:
        """Reload the trust file now (SIGHUP)."""
        if self.trust is not None and self.trust.reload_if_changed(force=True):
            log.info("trust reloaded on request")

    async def _housekeeping(self) -> None:
        """Between heartbeats: trust file changes, journal compaction, pending recovery."""
        if self.trust is not None:
            self.trust.reload_if_changed()
        if self.journal.needs_compaction():
            self.journal.compact(utcnow())
        if not self._recovered:
            await self._recover_services()

    # --- requests ---------------------------------------------------------------

    def _selectable(self) -> dict[str, str]:
        return self.heartbeat.facts().selectable()

    async def _on_request(self, msg: Incoming) -> None:
        """Subscription callback: never blocks; schedules the request as its own task."""
        refusal: ShoalError | None = None
        limit = self.settings.concurrency + self.settings.queue_limit
        if not self._accepting:
            refusal = ShuttingDown("the agent is shutting down")
        elif self._pending >= limit:
            refusal = Busy(f"the agent has {self._pending} requests queued or running")
        if refusal is not None:
            if is_for_host(self.subjects, msg.subject, msg.data, self.host_id, self._selectable):
                label = verb_label(self.subjects, msg.subject, None)
                self.metrics.observe_request(label, str(refusal.code), 0.0)
                await self._send(
                    msg.reply, refusal_reply(msg.data, self.host_id, refusal, utcnow())
                )
            return
        self._pending += 1
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Incoming) -> None:
        from .handlers import HANDLERS  # loaded by the first request

        started_at = utcnow()
        t0 = time.monotonic()
        admission: Admission | None = None
        caller = Caller()
        gate = Gate(
            subjects=self.subjects,
            host_id=self.host_id,
            selectable=self._selectable,
            trust=self.trust,
            journal=self.journal,
            max_clock_skew=self.settings.max_clock_skew,
        )
        try:
            try:
                admission = admit(gate, msg.subject, msg.data, utcnow(), caller)
                if admission is None:
                    return  # a broadcast for other hosts
                reply_to = msg.reply

                async def send(message: BaseModel) -> None:
                    await self._send(reply_to, message)

                async with self._slots:
                    ctx = RequestContext(self.host, admission.request, send)
                    result = await HANDLERS[admission.verb](ctx, admission.args)
                reply = success_reply(admission.request.id, self.host_id, result, started_at, t0)
            except ShoalError as exc:
                reply = self._failure(msg, admission, exc, started_at, t0)
            except Exception:
                log.exception("internal error serving a request on %s", msg.subject)
                failure = ShoalError("internal agent error; see the agent's log")
                reply = self._failure(msg, admission, failure, started_at, t0)
            label = verb_label(self.subjects, msg.subject, admission)
            self.metrics.observe_request(label, reply_outcome(reply), reply.duration)
            await self._conclude(msg, admission, caller, reply)
            await self._send(msg.reply, reply)
        finally:
            self._pending -= 1

    def _failure(
        self,
        msg: Incoming,
        admission: Admission | None,
        exc: ShoalError,
        started_at: datetime,
        t0: float,
    ) -> Reply:
        request_id = admission.request.id if admission is not None else None
        return failure_reply(request_id, msg.data, self.host_id, exc, started_at, t0)

    async def _conclude(
        self, msg: Incoming, admission: Admission | None, caller: Caller, reply: Reply
    ) -> None:
        """Journal the outcome and write the audit record of this decision."""
        error = reply.error
        if admission is not None:
            self.journal.finish(
                admission.request.id,
                utcnow(),
                ok=reply.ok,
                code=str(error.code) if error is not None else None,
                message=error.message if error is not None else None,
            )
        record = audit_record(
            host_id=self.host_id,
            verb_token=self.subjects.verb_of(msg.subject),
            reply=reply,
            request=caller.request,
            signer=caller.signer,
            key=caller.key,
            accepted=admission is not None,
        )
        log_record(record)
        await self.connection.publish(
            self.subjects.audit(self.host_id),
            record.model_dump_json().encode(),
            what="an audit record",
        )

    async def _send(self, reply_to: str | None, message: BaseModel) -> None:
        """Publish a reply or progress to the caller's inbox (a large reply in chunks)."""
        if not reply_to or not self.connection.is_open:
            return
        parts = encode_message(message, self.host_id, self.connection.max_payload)
        for headers, data in parts:
            if not await self.connection.publish(
                reply_to, data, what=f"a reply to {reply_to}", headers=headers
            ):
                return


__all__ = ["Agent", "AgentConfigError", "AgentStartError", "AgentStopped"]

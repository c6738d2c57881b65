"""The Fleet: the controller's async library API. The CLI is a thin layer over it."""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack

from pydantic import BaseModel, ValidationError

from shoal.protocol import (
    LOG_PHASE,
    MAX_FOLLOW_SECONDS,
    STDERR_PHASE,
    STDOUT_PHASE,
    VERBS,
    AgentEvent,
    AgentFacts,
    AuditRecord,
    CancelArgs,
    CancelResult,
    ContainerActionResult,
    DfArgs,
    DfResult,
    ErrorCode,
    ErrorInfo,
    EventsArgs,
    EventsResult,
    ExecArgs,
    ExecResult,
    ImagesArgs,
    ImagesResult,
    InfoArgs,
    InfoResult,
    InspectArgs,
    InspectResult,
    LogLine,
    LogsArgs,
    LogsResult,
    NatsOptions,
    Progress,
    PruneArgs,
    PruneResult,
    PsArgs,
    PsResult,
    PullArgs,
    PullResult,
    RemoveArgs,
    RemoveResult,
    Reply,
    Request,
    RestartArgs,
    RmArgs,
    RolloutConfig,
    RunArgs,
    SecretArgs,
    SecretResult,
    SecretsArgs,
    SecretsResult,
    Selector,
    ServicesArgs,
    ServiceSpec,
    ServicesResult,
    Signer,
    StartArgs,
    StatsArgs,
    StatsResult,
    StopArgs,
    Subjects,
    Target,
    Verb,
    decode_log_lines,
    new_request_id,
    utcnow,
)

from .audit import AuditStream
from .errors import NotConnected, RegistryUnavailable
from .gather import (
    Gathered,
    ProgressCallback,
    ReplyCallback,
    encode_request,
    gather_replies,
    invalid_result_message,
    relaxed_gc,
)
from .locks import LOCK_TIMEOUT, ServiceLock, lock_bucket_name
from .registry import AgentRecord, Registry, is_online, is_transient, with_recovery
from .result import FleetResult
from .scope import Scope, ScopeOptions
from .targeting import Limit, Targets, resolve_targets
from .transport import Connection, JetStream, Message, Subscription, connect, nats_errors

if TYPE_CHECKING:
    from .desired import Convergence, Declaration, DesiredStore
    from .rollout import RolloutEvent

log = logging.getLogger("shoal.controller")
R = TypeVar("R", bound=BaseModel)
OutputCallback = Callable[[str, str, str], None]
"""``(host, stream, text)``: output of ``exec`` and ``run`` as it comes."""

PING_MEMORY = 30.0
"""Seconds a host that answered a discovery ping counts as known without a heartbeat."""
DEFAULT_TIMEOUT = 10.0
DISCOVERY_WINDOW = 1.0


class Fleet:
    """A connection to the fleet. Use ``async with Fleet(...) as fleet``.

    Discovery uses the registry stream when JetStream is available, and falls
    back to a broadcast ``ping`` when it is not.
    """

    def __init__(
        self,
        options: NatsOptions | None = None,
        *,
        prefix: str = "shoal",
        timeout: float = DEFAULT_TIMEOUT,
        offline_after: float | None = None,
        discovery_window: float = DISCOVERY_WINDOW,
        sender: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.options = options or NatsOptions(name="shoal")
        self.subjects = Subjects(prefix)
        self.timeout = timeout
        self.offline_after = offline_after
        self.discovery_window = discovery_window
        self.sender = sender or f"{getpass.getuser()}@{socket.gethostname()}"
        self.signer = signer
        self._nc: Connection | None = None
        self._registry: Registry | None = None
        self._registry_checked = False
        self._pinged: dict[str, tuple[float, AgentRecord]] = {}
        """Hosts that answered a discovery ping, with when (merged into agents())."""

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._nc is None:
            self._nc = await connect(self.options)

    async def close(self) -> None:
        """Drain and close; safe to call twice."""
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()

    @property
    def nc(self) -> Connection:
        if self._nc is None:
            raise NotConnected("the Fleet is not connected; use 'async with Fleet(...)'")
        return self._nc

    # --- registry and discovery -------------------------------------------------------

    async def registry(self) -> Registry | None:
        """The registry, created if missing; None when JetStream is unavailable.

        A JetStream that is there but does not answer yet (a restarted server still
        recovering its streams) is asked again for up to ``RECOVERY_WAIT`` seconds before
        the Fleet falls back to ping discovery, and asked again on the next call.
        """
        if not self._registry_checked:
            js = JetStream(self.nc, timeout=3.0)
            registry = Registry(js, self.subjects)

            created: list[bool] = []

            async def ensure() -> None:
                created.append(await registry.ensure())
                await AuditStream(js, self.subjects).ensure()

            try:
                await with_recovery(ensure)
                self._registry, self._registry_checked = registry, True
                if any(created):
                    await self.discover()  # every live agent answers and announces itself
            except RegistryUnavailable as exc:
                # Not enabled: settled for this Fleet. Still recovering: ask next time.
                self._registry_checked = not is_transient(exc)
                log.info("no registry (%s); discovering agents by ping", exc.message)
        return self._registry

    async def init_registry(self, replicas: int = 1) -> bool:
        """Create the registry and audit streams (``shoal init``). True if any was created."""
        js = JetStream(self.nc, timeout=5.0)
        registry = Registry(js, self.subjects, replicas=replicas)
        created = await registry.ensure()
        created = await AuditStream(js, self.subjects, replicas=replicas).ensure() or created
        self._registry, self._registry_checked = registry, True
        if created:
            await self.discover()  # every live agent answers and announces itself
        return created

    async def audit(
        self,
        selector: Selector | None = None,
        since: datetime | None = None,
        limit: int = 10_000,
    ) -> list[AuditRecord]:
        """Audit records from the audit stream (hosts chosen by the selector's globs)."""
        await self.registry()
        return await AuditStream(JetStream(self.nc, timeout=5.0), self.subjects).read(
            selector or Selector(), since, limit
        )

    async def agents(self) -> list[AgentRecord]:
        """Every known host, online or offline, sorted by host id."""
        registry = await self.registry()
        records: list[AgentRecord] = []
        if registry is not None:
            with relaxed_gc():
                records = await with_recovery(partial(registry.read, self.offline_after))
        fresh: list[AgentRecord] = []
        if registry is None or not records:
            # Without a registry (or before any heartbeat reached it) ask the fleet.
            fresh = await self.discover()
        # A host that answered a ping moments ago counts even if its heartbeat is not in
        # the registry yet (a registry created after the agents started, a lost beat).
        horizon = time.monotonic() - PING_MEMORY
        recent = [r for at, r in self._pinged.values() if at >= horizon]
        known = {r.host_id for r in records}
        for extra in (*fresh, *recent):
            if extra.host_id not in known:
                known.add(extra.host_id)
                records.append(extra)
        return sorted(records, key=lambda r: r.host_id)

    async def discover(self, window: float | None = None) -> list[AgentRecord]:
        """Broadcast a ping and collect the facts of every agent that answers."""
        window = self.discovery_window if window is None else window
        records: dict[str, AgentRecord] = {}

        async def on_msg(msg: Message) -> None:
            try:
                reply = Reply.model_validate_json(msg.data)
                if not reply.ok or reply.result is None:
                    return
                facts = AgentFacts.model_validate(reply.result)
            except ValidationError:
                return
            now = utcnow()
            records[facts.host_id] = AgentRecord(
                facts.host_id, facts, now, is_online(facts, now, self.offline_after)
            )

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, on_msg)
        try:
            template = Request(
                verb=Verb.PING, sender=self.sender, target=Target(selector=Selector())
            ).model_dump(mode="json", exclude={"sig"})
            await self.nc.publish(
                self.subjects.broadcast(Verb.PING),
                encode_request(template, template["target"], self.signer),
                reply=inbox,
            )
            await self.nc.flush()
            await asyncio.sleep(window)  # a discovery window, not synchronisation
        finally:
            await sub.unsubscribe()
        at = time.monotonic()
        self._pinged.update({host: (at, record) for host, record in records.items()})
        return sorted(records.values(), key=lambda r: r.host_id)

    async def forget(self, host_id: str) -> bool:
        """Remove an offline host from the registry. True if it was known."""
        registry = await self.registry()
        if registry is None:
            raise RegistryUnavailable("forget needs the registry, and JetStream is not enabled")
        return await registry.forget(host_id)

    async def resolve(
        self, selector: Selector | None = None, limit: Limit | None = None
    ) -> Targets:
        """The expected set for a selector, worked out before anything is sent."""
        return resolve_targets(await self.agents(), selector or Selector(), limit)

    # --- requests -----------------------------------------------------------------

    async def request(
        self,
        verb: Verb,
        args: BaseModel,
        scope: Scope | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        on_reply: ReplyCallback | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[Any]:
        """Send ``verb`` to every host of the scope and gather one answer per host.

        The scope is ``scope`` with ``options`` (selector, limit, timeout, retries)
        replaced: ``fleet.ps(selector=web)`` and ``fleet.ps(scope=Scope(selector=web))``
        are the same request. Each result in the returned :class:`FleetResult` is the
        verb's result model (see :data:`shoal.protocol.VERBS`).
        """
        with relaxed_gc():
            return await self._request(
                verb, args, Scope.of(scope, **options), on_progress, on_reply
            )

    async def _request(
        self,
        verb: Verb,
        args: BaseModel,
        scope: Scope,
        on_progress: ProgressCallback | None,
        on_reply: ReplyCallback | None,
    ) -> FleetResult[Any]:
        spec = VERBS[verb]
        started = time.monotonic()
        targets = await self.resolve(scope.selector, scope.limit)
        wait = self.timeout if scope.timeout is None else scope.timeout
        result: FleetResult[Any] = FleetResult(verb=str(verb), request_id="", targeted=targets.all)
        pending = list(targets.online)
        attempts = 1 + (max(0, scope.retries) if not spec.mutating else 0)
        gathered = None
        for _ in range(attempts):
            async with nats_errors(f"{verb} request"):
                gathered = await gather_replies(
                    self.nc,
                    self.subjects,
                    verb,
                    args.model_dump(mode="json"),
                    pending,
                    timeout=wait,
                    sender=self.sender,
                    on_progress=on_progress,
                    on_reply=on_reply,
                    signer=self.signer,
                    result_model=spec.result,
                )
            result.request_id = result.request_id or gathered.request_id
            self._collect(result, gathered, spec.result)
            pending = [h for h in gathered.missing if h not in gathered.no_responders]
            if not pending:
                break
        assert gathered is not None or not targets.online
        if gathered is not None:
            result.running = sorted(h for h, st in gathered.status.items() if st.state == "running")
            result.unreported = {
                h: st for h, st in gathered.status.items() if st.state != "running"
            }
            result.missing = sorted([*gathered.missing, *targets.offline])
        else:
            result.missing = sorted(targets.offline)
        result.offline = list(targets.offline)
        result.duration = time.monotonic() - started
        return result

    @staticmethod
    def _collect(result: FleetResult[Any], gathered: Gathered, model: type[BaseModel]) -> None:
        """Sort one gather's answers into replies and errors (results are validated already,
        with their envelope, in :func:`gather_replies`)."""
        replies, errors = result.replies, result.errors
        typed, invalid = gathered.results, gathered.invalid_results
        for host, reply in gathered.replies.items():
            if not reply.ok:
                assert reply.error is not None
                errors[host] = reply.error
            elif host in typed:
                replies[host] = typed[host]
            elif host in invalid:
                errors[host] = ErrorInfo(code=ErrorCode.INVALID_REPLY, message=invalid[host])
            else:  # gathered without a result model
                try:
                    replies[host] = model.model_validate(reply.result or {})
                except ValidationError as exc:
                    errors[host] = ErrorInfo(
                        code=ErrorCode.INVALID_REPLY, message=invalid_result_message(exc)
                    )
        for host, message in gathered.malformed.items():
            errors[host] = ErrorInfo(code=ErrorCode.INVALID_REPLY, message=message)

    async def ping(
        self,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[AgentFacts]:
        return await self.request(Verb.PING, VERBS[Verb.PING].args(), scope, **options)

    async def ps(
        self,
        args: PsArgs | None = None,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[PsResult]:
        """Containers on every targeted host."""
        return await self.request(Verb.PS, args or PsArgs(), scope, **options)

    async def df(
        self,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[DfResult]:
        """Disk usage per kind on every targeted host."""
        return await self.request(Verb.DF, DfArgs(), scope, **options)

    async def prune(
        self,
        args: PruneArgs,
        *,
        on_progress: ProgressCallback | None = None,
        on_reply: ReplyCallback | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[PruneResult]:
        """Remove unused objects (or, with ``args.dry_run``, report what would go)."""
        return await self.request(
            Verb.PRUNE, args, scope, on_progress=on_progress, on_reply=on_reply, **options
        )

    # --- services and rollouts ---------------------------------------------------------

    def service_lock(self, service: str) -> ServiceLock:
        """The fleet-wide lock of ``service`` (``async with``); see :mod:`controller.locks`."""
        return ServiceLock(
            JetStream(self.nc, timeout=LOCK_TIMEOUT),
            service,
            holder=f"{self.sender} (pid {os.getpid()})",
            bucket=lock_bucket_name(self.subjects),
        )

    def deploy(
        self,
        spec: ServiceSpec,
        *,
        selector: Selector | None = None,
        limit: Limit | None = None,
        config: RolloutConfig | None = None,
        rollback_config: RolloutConfig | None = None,
        canary: int = 0,
        timeout: float | None = None,
        health_timeout: float = 300.0,
        dry_run: bool = False,
        values: Mapping[str, bytes] | None = None,
        wait_for: Literal["running", "completed"] = "running",
    ) -> AsyncGenerator[RolloutEvent, None]:
        """Roll ``spec`` out to the targeted hosts in waves; iterate the events.

        ``config`` is the compose file's ``update_config`` (parallelism, delay, monitor,
        max failure ratio, failure action, order); ``rollback_config`` (default:
        ``config``) paces an automatic rollback. ``canary`` hosts go first, alone.
        ``timeout`` is how long a host may stay silent (each progress message restarts
        it; the monitor window is added) [default 60s]. With ``dry_run`` every host
        reports what it would do, in one request, and nothing changes.

        ``values`` holds the values of the spec's secrets and configs by key
        (``ComposeProject.values``): each wave's request carries them sealed to each of
        its hosts' box keys. ``wait_for="completed"`` deploys a task that must exit 0.

        The fleet-wide lock of the service is held for the whole rollout (not for a dry
        run). To stop between waves, stop iterating: closing the generator (``break``
        inside ``async with contextlib.aclosing(fleet.deploy(...)) as events``) sends
        nothing more, waits for the wave already sent, and releases the lock.
        """
        from .rollout import deploy_rollout  # loaded by the first rollout

        return deploy_rollout(
            self,
            spec,
            selector=selector,
            limit=limit,
            config=config,
            rollback_config=rollback_config,
            canary=canary,
            timeout=timeout,
            health_timeout=health_timeout,
            dry_run=dry_run,
            values=values,
            wait_for=wait_for,
        )

    def rollback(
        self,
        service: str,
        *,
        selector: Selector | None = None,
        limit: Limit | None = None,
        config: RolloutConfig | None = None,
        canary: int = 0,
        timeout: float | None = None,
        health_timeout: float = 300.0,
    ) -> AsyncGenerator[RolloutEvent, None]:
        """Put the targeted hosts back on their previous revision of ``service``, in waves.

        Same waves, lock and stopping as :meth:`deploy`; a ``rollback`` failure action
        pauses (a rollback is not rolled back). A host without a previous revision
        fails with ``not_found``.
        """
        from .rollout import rollback_rollout

        return rollback_rollout(
            self,
            service,
            selector=selector,
            limit=limit,
            config=config,
            canary=canary,
            timeout=timeout,
            health_timeout=health_timeout,
        )

    async def services(
        self,
        service: str | None = None,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ServicesResult]:
        """The services deployed on every targeted host (or only ``service``)."""
        return await self.request(Verb.SERVICES, ServicesArgs(service=service), scope, **options)

    async def pull(
        self,
        image: str,
        *,
        on_progress: ProgressCallback | None = None,
        on_reply: ReplyCallback | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[PullResult]:
        """Pull ``image`` on every targeted host (progress phase ``pulling``, in bytes)."""
        return await self.request(
            Verb.PULL,
            PullArgs(image=image),
            scope,
            on_progress=on_progress,
            on_reply=on_reply,
            **options,
        )

    # --- remote execution ---------------------------------------------------------------

    async def exec(
        self,
        target: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        kill_after: float = 60.0,
        batch: str | int = 0,
        on_output: OutputCallback | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ExecResult]:
        """Run ``command`` in ``target`` (a container, or a service's current container) on
        every targeted host, ``batch`` hosts at a time (N or N%; 0: all at once).

        ``on_output(host, stream, text)`` sees the output as it comes (``stream`` is
        ``stdout`` or ``stderr``); each result has the exit code (None: killed at the
        ``kill_after`` seconds) and the first 4 MiB of each stream.
        """
        args = ExecArgs(
            target=target,
            command=tuple(command),
            user=user,
            workdir=workdir,
            env=dict(env or {}),
            timeout=kill_after,
        )
        return await self._batched(Verb.EXEC, args, batch, on_output, Scope.of(scope, **options))

    async def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        user: str | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        network: str = "none",
        kill_after: float = 60.0,
        batch: str | int = 0,
        on_output: OutputCallback | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ExecResult]:
        """Run ``command`` in a one-off container of ``image`` on every targeted host
        (``docker run --rm``; network ``none`` unless given); as :meth:`exec`."""
        args = RunArgs(
            image=image,
            command=tuple(command),
            user=user,
            workdir=workdir,
            env=dict(env or {}),
            network=network,
            timeout=kill_after,
        )
        return await self._batched(Verb.RUN, args, batch, on_output, Scope.of(scope, **options))

    async def _batched(
        self,
        verb: Verb,
        args: ExecArgs | RunArgs,
        batch: str | int,
        on_output: OutputCallback | None,
        scope: Scope,
    ) -> FleetResult[ExecResult]:
        from .rollout import wave_size

        if scope.timeout is None or scope.timeout < args.timeout + 15:
            # The host answers when the command ends: wait that long, and a bit.
            scope = Scope.of(scope, timeout=max(scope.timeout or 0, args.timeout + 15))

        def on_progress(progress: Progress) -> None:
            if on_output is not None and progress.phase in (STDOUT_PHASE, STDERR_PHASE):
                on_output(progress.host, progress.phase, progress.message)

        targets = await self.resolve(scope.selector, scope.limit)
        size = wave_size(str(batch), len(targets.all))
        if size >= len(targets.all):
            return await self.request(verb, args, scope, on_progress=on_progress)
        merged: FleetResult[ExecResult] | None = None
        started = time.monotonic()
        for start in range(0, len(targets.all), size):
            wave = targets.all[start : start + size]
            part: FleetResult[ExecResult] = await self.request(
                verb,
                args,
                Scope.of(scope, selector=Selector(hosts=tuple(wave)), limit=None),
                on_progress=on_progress,
            )
            if merged is None:
                merged = part
                merged.targeted = list(targets.all)
            else:
                merged.replies.update(part.replies)
                merged.errors.update(part.errors)
                merged.missing.extend(part.missing)
                merged.offline.extend(part.offline)
                merged.running.extend(part.running)
                merged.unreported.update(part.unreported)
        assert merged is not None
        merged.duration = time.monotonic() - started
        return merged

    # --- desired state ------------------------------------------------------------------

    def desired_store(self) -> DesiredStore:
        from .desired import DesiredStore

        return DesiredStore(JetStream(self.nc, timeout=5.0), self.subjects)

    async def apply(self, declarations: Sequence[Declaration]) -> list[tuple[Declaration, bool]]:
        """Record each declaration (a new generation where it changes anything).

        ``shoal serve`` converges the selected hosts to them. Returns each stored
        declaration with whether it changed.
        """
        store = self.desired_store()
        return [await store.declare(d) for d in declarations]

    async def desired(self) -> dict[str, Declaration]:
        """The declarations, by service (deleted ones until no host runs them)."""
        return await self.desired_store().declarations()

    async def withdraw(self, service: str) -> Declaration | None:
        """Declare ``service`` deleted: hosts remove it. None if it was not declared."""
        return await self.desired_store().withdraw(service, self.sender)

    async def status(self, services: Sequence[str] = ()) -> list[Convergence]:
        """Per declaration and selected host: converged, pending, deploying, failed,
        drifted or removing, with why and since when (see :mod:`.desired`)."""
        from .desired import statuses

        store = self.desired_store()
        declarations = await store.declarations()
        if services:
            declarations = {n: d for n, d in declarations.items() if n in set(services)}
        return statuses(declarations, await self.agents(), await store.all_records())

    async def set_secret(
        self,
        name: str,
        value: bytes,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[SecretResult]:
        """Store secret ``name`` on every targeted host, sealed to each host's box key.

        Services mount it with ``external: true``. A host without a box key is refused
        before anything is sent (SealingError).
        """
        from shoal.protocol.sealing import SealingError, seal

        scope = Scope.of(scope, **options)
        targets = await self.resolve(scope.selector, scope.limit)
        keyless = [h for h in targets.online if h not in targets.box_keys]
        if keyless:
            raise SealingError(
                f"host(s) {', '.join(keyless[:10])} announce no box key (an agent older than"
                " secrets, or without PyNaCl), so they cannot take secrets"
            )
        sealed = {h: seal(value, targets.box_keys[h]) for h in targets.online}
        args = SecretArgs(action="set", name=name, sealed=sealed)
        return await self.request(Verb.SECRET, args, scope)

    async def remove_secret(
        self, name: str, *, scope: Scope | None = None, **options: Unpack[ScopeOptions]
    ) -> FleetResult[SecretResult]:
        """Delete secret ``name`` from every targeted host (changed: it was there)."""
        return await self.request(Verb.SECRET, SecretArgs(action="rm", name=name), scope, **options)

    async def secrets(
        self, *, scope: Scope | None = None, **options: Unpack[ScopeOptions]
    ) -> FleetResult[SecretsResult]:
        """The names of the secrets stored on every targeted host."""
        return await self.request(Verb.SECRETS, SecretsArgs(), scope, **options)

    async def remove_service(
        self,
        service: str,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[RemoveResult]:
        """Remove ``service`` (its containers) from every targeted host, all at once."""
        return await self.request(Verb.REMOVE, RemoveArgs(service=service), scope, **options)

    # --- everyday commands -------------------------------------------------------------

    async def images(
        self,
        all_images: bool = False,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ImagesResult]:
        """Images on every targeted host, with their architecture."""
        return await self.request(Verb.IMAGES, ImagesArgs(all=all_images), scope, **options)

    async def logs(
        self,
        target: str,
        *,
        tail: int = 100,
        since: float | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[LogsResult]:
        """The last ``tail`` log lines (of the last ``since`` seconds) of ``target`` on every
        targeted host: a container name or id, or a service (its current container)."""
        return await self.request(
            Verb.LOGS, LogsArgs(target=target, tail=tail, since=since), scope, **options
        )

    async def follow_logs(
        self,
        target: str,
        on_lines: Callable[[str, list[LogLine]], None],
        stop: asyncio.Event,
        *,
        tail: int = 100,
        since: float | None = None,
        selector: Selector | None = None,
        limit: Limit | None = None,
        timeout: float | None = None,
        max_duration: float = MAX_FOLLOW_SECONDS,
    ) -> FleetResult[LogsResult]:
        """Stream the logs of ``target`` from every targeted host at once.

        ``on_lines(host, lines)`` is called as lines arrive. Streams end when ``stop`` is
        set (every host is then told to stop its stream), when a container stops, or
        after ``max_duration`` seconds (at most one hour). A quiet stream sends
        keepalives, so a host that goes silent for ``timeout`` seconds is reported
        missing as usual.
        """
        wait = self.timeout if timeout is None else timeout
        targets = await self.resolve(selector, limit)
        chosen = Selector(hosts=tuple(targets.all)) if targets.all else selector
        stream_id = new_request_id()
        args = LogsArgs(
            target=target,
            tail=tail,
            since=since,
            follow=True,
            stream_id=stream_id,
            max_duration=max_duration,
            keepalive=max(0.5, min(5.0, wait / 3)),
        )

        def on_progress(progress: Progress) -> None:
            if progress.phase == LOG_PHASE:
                on_lines(progress.host, decode_log_lines(progress.message))

        following = asyncio.create_task(
            self.request(
                Verb.LOGS,
                args,
                selector=chosen,
                limit=None if targets.all else limit,
                timeout=wait,
                on_progress=on_progress,
            ),
            name=f"follow-{stream_id}",
        )
        stopping = asyncio.create_task(stop.wait(), name=f"follow-stop-{stream_id}")
        try:
            await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done() and targets.online:
                await self.cancel_stream(
                    stream_id,
                    selector=Selector(hosts=tuple(targets.online)),
                    timeout=min(wait, 5.0),
                )
            return await following
        finally:
            stopping.cancel()
            following.cancel()
            await asyncio.gather(following, stopping, return_exceptions=True)

    async def cancel_stream(
        self,
        stream_id: str,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[CancelResult]:
        """Stop the log stream ``stream_id`` on the targeted hosts (where it still runs)."""
        return await self.request(Verb.CANCEL, CancelArgs(stream_id=stream_id), scope, **options)

    async def stats(
        self,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[StatsResult]:
        """One sample of CPU, memory, network and block I/O per running container."""
        return await self.request(Verb.STATS, StatsArgs(), scope, **options)

    async def inspect(
        self,
        target: str,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[InspectResult]:
        """The engine's inspect document of ``target`` (container or service) on every host."""
        return await self.request(Verb.INSPECT, InspectArgs(target=target), scope, **options)

    async def info(
        self,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[InfoResult]:
        """Engine details of every targeted host, as ``docker info`` shows them."""
        return await self.request(Verb.INFO, InfoArgs(), scope, **options)

    async def start_container(
        self,
        target: str,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ContainerActionResult]:
        """Start ``target`` (a container, or a service's current container) on every host."""
        return await self.request(Verb.START, StartArgs(target=target), scope, **options)

    async def stop_container(
        self,
        target: str,
        *,
        stop_timeout: int | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ContainerActionResult]:
        """Stop ``target``; ``stop_timeout`` seconds before SIGKILL [the container's own]."""
        return await self.request(
            Verb.STOP, StopArgs(target=target, timeout=stop_timeout), scope, **options
        )

    async def restart_container(
        self,
        target: str,
        *,
        stop_timeout: int | None = None,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ContainerActionResult]:
        """Restart ``target``; ``stop_timeout`` seconds before SIGKILL [the container's own]."""
        return await self.request(
            Verb.RESTART, RestartArgs(target=target, timeout=stop_timeout), scope, **options
        )

    async def remove_container(
        self,
        target: str,
        *,
        force: bool = False,
        volumes: bool = False,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[ContainerActionResult]:
        """Remove ``target`` as ``docker rm`` does (a running one only with ``force``)."""
        return await self.request(
            Verb.RM, RmArgs(target=target, force=force, volumes=volumes), scope, **options
        )

    async def event_history(
        self,
        since: float,
        *,
        scope: Scope | None = None,
        **options: Unpack[ScopeOptions],
    ) -> FleetResult[EventsResult]:
        """Container events of the last ``since`` seconds that the engines still hold."""
        return await self.request(Verb.EVENTS, EventsArgs(since=since), scope, **options)

    async def watch_events(
        self, selector: Selector | None = None
    ) -> AsyncGenerator[AgentEvent, None]:
        """Subscribe to the fleet's events now; iterate the returned generator for them.

        Agent lifecycle events (started, stopping, engine_lost, engine_regained) and
        container events, from the hosts the selector matches (label selectors are
        matched against the hosts known now). Events are not stored: only those
        published after this call arrive. Close the generator to unsubscribe.
        """
        selector = selector or Selector()
        facts: dict[str, dict[str, str]] = {}
        if selector.labels:
            facts = {r.host_id: r.facts.selectable() for r in await self.agents()}
        sub = await self.nc.subscribe(self.subjects.events_all(), pending_msgs_limit=100_000)
        await self.nc.flush_in_order()
        return self._events(sub, selector, facts)

    async def _events(
        self, sub: Subscription, selector: Selector, facts: dict[str, dict[str, str]]
    ) -> AsyncGenerator[AgentEvent, None]:
        head = f"{self.subjects.prefix}.events."
        try:
            async for msg in sub.messages():
                host = msg.subject[len(head) :].split(".", 1)[0]
                try:
                    event = AgentEvent.model_validate_json(msg.data)
                except ValidationError:
                    log.warning("ignoring a malformed event on %s", msg.subject)
                    continue
                if event.host_id != host:
                    log.warning("ignoring an event for %s sent on %s", event.host_id, msg.subject)
                    continue
                if selector.labels and host not in facts:
                    continue
                if selector.matches(host, facts.get(host, {"host": host})):
                    yield event
        finally:
            await sub.unsubscribe()

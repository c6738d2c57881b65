"""One handler per verb. A handler gets a context and typed args, returns a typed result."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from shoal.protocol import (
    LOG_KEEPALIVE_PHASE,
    LOG_PHASE,
    SERVICE_LABEL,
    Busy,
    CancelArgs,
    CancelResult,
    ContainerActionResult,
    ContainerRef,
    DeployArgs,
    DfArgs,
    DockerUnavailable,
    EventsArgs,
    EventsResult,
    ImagesArgs,
    ImagesResult,
    InfoArgs,
    InspectArgs,
    InspectResult,
    LogLine,
    LogsArgs,
    LogsResult,
    NotFound,
    PingArgs,
    PruneArgs,
    PrunedItem,
    PruneFailure,
    PruneKind,
    PruneKindResult,
    PruneResult,
    PsArgs,
    PsResult,
    PullArgs,
    RemoveArgs,
    Request,
    RestartArgs,
    RmArgs,
    RollbackArgs,
    ServicesArgs,
    ShoalError,
    StartArgs,
    StatsArgs,
    StatusArgs,
    StatusResult,
    StopArgs,
    Verb,
    encode_log_lines,
    utcnow,
)
from shoal.protocol.service import SERVICE_NAME_PATTERN

from .deploy import _current_container
from .engine import ContainerState
from .prune import PrunePlan, Removal, disk_usage, plan_prune
from .streams import StreamClosed, ThreadedStream, container_event

if TYPE_CHECKING:
    from .runtime import Agent

log = logging.getLogger("shoal.agent")


class RequestContext:
    """What a handler may use: the request, the engine (via the pool) and progress."""

    def __init__(self, agent: Agent, request: Request, reply_to: str | None) -> None:
        self.agent = agent
        self.request = request
        self.reply_to = reply_to
        self._seq = 0

    async def progress(
        self,
        phase: str,
        message: str = "",
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> None:
        """Tell the controller this host is still working on the request."""
        self._seq += 1
        await self.agent.send_progress(
            self, phase, message, seq=self._seq, current=current, total=total
        )

    def progress_nowait(
        self,
        phase: str,
        message: str = "",
        *,
        current: float | None = None,
        total: float | None = None,
    ) -> None:
        """Send progress from a synchronous callback on the event loop (fire and forget)."""
        task = asyncio.create_task(self.progress(phase, message, current=current, total=total))
        self.agent.keep_task(task)

    @asynccontextmanager
    async def keepalive(
        self, phase: str, message: str = "", every: float = 2.0
    ) -> AsyncIterator[None]:
        """Send progress every few seconds while a long step runs without its own."""

        async def beat() -> None:
            while True:
                await self.progress(phase, message)
                await asyncio.sleep(every)

        task = asyncio.create_task(beat(), name=f"keepalive-{self.request.id}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


Handler = Callable[[RequestContext, Any], Awaitable[BaseModel]]


async def handle_ping(ctx: RequestContext, args: PingArgs) -> BaseModel:
    return await ctx.agent.current_facts()


async def handle_ps(ctx: RequestContext, args: PsArgs) -> BaseModel:
    containers = await ctx.agent.in_engine(ctx.agent.engine.list_containers, args)
    return PsResult(containers=containers)


HANDLERS: dict[Verb, Handler] = {
    Verb.PING: handle_ping,
    Verb.PS: handle_ps,
}


async def handle_df(ctx: RequestContext, args: DfArgs) -> BaseModel:
    agent = ctx.agent
    async with ctx.keepalive("df", "reading disk usage"):
        snapshot = await agent.in_engine(agent.engine.disk_snapshot, timeout=agent.long_timeout)
    return disk_usage(snapshot)


async def handle_prune(ctx: RequestContext, args: PruneArgs) -> BaseModel:
    """Plan against the rules, then (unless a dry run) remove one object at a time.

    Progress is sent per object, so a long prune is never mistaken for a silent
    host. If the engine goes away midway, the error carries what was removed.
    """
    agent = ctx.agent
    async with ctx.keepalive("planning", "reading disk usage"):
        snapshot = await agent.in_engine(agent.engine.disk_snapshot, timeout=agent.long_timeout)
    plan = plan_prune(snapshot, args, agent.keep_rules, utcnow())
    tally = _Tally(plan)
    if args.dry_run:
        for removals in plan.removals.values():
            for removal in removals:
                tally.removed(removal)
        return tally.result(dry_run=True)

    total = sum(len(r) for r in plan.removals.values())
    done = 0
    try:
        for kind, removals in plan.removals.items():
            if kind == PruneKind.BUILD_CACHE:
                if removals:
                    async with ctx.keepalive("build-cache", "pruning build cache"):
                        count, reclaimed = await agent.in_engine(
                            agent.engine.prune_build_cache, args.until, timeout=agent.long_timeout
                        )
                    tally.build_cache(removals[:count], reclaimed)
                done += len(removals)
                continue
            for removal in removals:
                done += 1
                await ctx.progress(
                    str(kind),
                    f"removing {removal.name or removal.id[:12]}",
                    current=done,
                    total=total,
                )
                try:
                    await _remove(agent, removal)
                except DockerUnavailable:
                    raise
                except ShoalError as exc:
                    tally.failed(removal, exc)
                else:
                    tally.removed(removal)
    except DockerUnavailable as exc:
        partial = tally.result(dry_run=False)
        exc.detail["partial"] = partial.model_dump(mode="json")
        exc.message = f"{exc.message} (after removing {partial.removed_count} objects)"
        raise
    return tally.result(dry_run=False)


class _Tally:
    """What a prune removed, failed to remove and reclaimed, per kind."""

    def __init__(self, plan: PrunePlan) -> None:
        self.plan = plan
        self._removed: dict[PruneKind, list[PrunedItem]] = {k: [] for k in plan.removals}
        self._failed: dict[PruneKind, list[PruneFailure]] = {k: [] for k in plan.removals}
        self._reclaimed: dict[PruneKind, int] = dict.fromkeys(plan.removals, 0)

    def removed(self, removal: Removal) -> None:
        self._removed[removal.kind].append(
            PrunedItem(id=removal.id, name=removal.name, tags=list(removal.tags), size=removal.size)
        )
        self._reclaimed[removal.kind] += removal.size

    def build_cache(self, removals: list[Removal], reclaimed: int) -> None:
        kind = PruneKind.BUILD_CACHE
        self._removed[kind].extend(PrunedItem(id=r.id, size=r.size) for r in removals)
        self._reclaimed[kind] += reclaimed

    def failed(self, removal: Removal, exc: ShoalError) -> None:
        self._failed[removal.kind].append(
            PruneFailure(id=removal.id, name=removal.name, code=str(exc.code), message=exc.message)
        )

    def result(self, *, dry_run: bool) -> PruneResult:
        return PruneResult(
            dry_run=dry_run,
            protected=self.plan.protected,
            kinds={
                kind: PruneKindResult(
                    removed=self._removed[kind],
                    failed=self._failed[kind],
                    reclaimed=self._reclaimed[kind],
                    skipped=self.plan.skipped.get(kind, ""),
                )
                for kind in self.plan.removals
            },
        )


async def _remove(agent: Agent, removal: Removal) -> None:
    engine = agent.engine
    match removal.kind:
        case PruneKind.CONTAINERS:
            await agent.in_engine(engine.remove_container, removal.id)
        case PruneKind.IMAGES:
            # An image with several tags is untagged one tag at a time; the last goes.
            refs = [*removal.tags[:-1], removal.id] if len(removal.tags) > 1 else [removal.id]
            for ref in refs:
                await agent.in_engine(engine.remove_image, ref)
        case PruneKind.VOLUMES:
            await agent.in_engine(engine.remove_volume, removal.id)
        case PruneKind.NETWORKS:
            await agent.in_engine(engine.remove_network, removal.id)
        case _:
            raise ValueError(f"cannot remove {removal.kind}")


HANDLERS[Verb.DF] = handle_df
HANDLERS[Verb.PRUNE] = handle_prune


async def handle_status(ctx: RequestContext, args: StatusArgs) -> BaseModel:
    entry = ctx.agent.journal.get(args.request_id)
    if entry is None:
        return StatusResult(request_id=args.request_id, state="unknown")
    interrupted = entry.state == "interrupted"
    return StatusResult(
        request_id=entry.id,
        state=entry.state,
        verb=entry.verb,
        ok=False if interrupted else entry.ok,
        error_code="interrupted" if interrupted else entry.code,
        error_message=(
            "the agent stopped before the request finished" if interrupted else entry.message
        ),
        started_at=entry.started_at,
        finished_at=entry.finished_at,
    )


HANDLERS[Verb.STATUS] = handle_status


async def handle_deploy(ctx: RequestContext, args: DeployArgs) -> BaseModel:
    return await ctx.agent.deployer.deploy(ctx, args)


async def handle_rollback(ctx: RequestContext, args: RollbackArgs) -> BaseModel:
    return await ctx.agent.deployer.rollback(ctx, args)


async def handle_remove(ctx: RequestContext, args: RemoveArgs) -> BaseModel:
    return await ctx.agent.deployer.remove(ctx, args)


async def handle_services(ctx: RequestContext, args: ServicesArgs) -> BaseModel:
    return await ctx.agent.deployer.services(args)


async def handle_pull(ctx: RequestContext, args: PullArgs) -> BaseModel:
    return await ctx.agent.deployer.pull(ctx, args)


HANDLERS[Verb.DEPLOY] = handle_deploy
HANDLERS[Verb.ROLLBACK] = handle_rollback
HANDLERS[Verb.REMOVE] = handle_remove
HANDLERS[Verb.SERVICES] = handle_services
HANDLERS[Verb.PULL] = handle_pull


# --- everyday container verbs ---------------------------------------------------------------

MAX_FOLLOWS = 32
"""Log streams one agent serves at once; more are refused as busy."""
MAX_LOG_BYTES = 8 * 1024 * 1024
"""Most log text one ``logs`` reply carries; older lines are left out beyond it."""
_REMEMBERED_CANCELS = 1024


class _Follows:
    """The log streams an agent serves, by stream id, and the ids cancelled recently."""

    def __init__(self) -> None:
        self.active: dict[str, ThreadedStream[LogLine]] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()

    def cancel(self, stream_id: str) -> ThreadedStream[LogLine] | None:
        self.cancelled[stream_id] = None
        while len(self.cancelled) > _REMEMBERED_CANCELS:
            self.cancelled.popitem(last=False)
        return self.active.get(stream_id)


_FOLLOWS: weakref.WeakKeyDictionary[Agent, _Follows] = weakref.WeakKeyDictionary()


def _follows(agent: Agent) -> _Follows:
    follows = _FOLLOWS.get(agent)
    if follows is None:
        follows = _FOLLOWS[agent] = _Follows()
    return follows


async def resolve_target(ctx: RequestContext, target: str) -> ContainerState:
    """A service's current container if a service of that name is here, else the container."""
    agent = ctx.agent
    if re.fullmatch(SERVICE_NAME_PATTERN, target):
        containers = await agent.in_engine(agent.engine.service_containers, target)
        record = agent.deployer.store.get(target)
        if containers or record is not None:
            current = _current_container(containers, record)
            if current is None:
                raise NotFound(
                    f"service {target!r} has no container on host {agent.host_id}",
                    detail={"service": target},
                )
            return current
    try:
        return await agent.in_engine(agent.engine.container_state, target)
    except NotFound:
        raise NotFound(
            f"no container or service named {target!r} on host {agent.host_id}",
            detail={"target": target},
        ) from None


def container_ref(state: ContainerState) -> ContainerRef:
    return ContainerRef(
        id=state.id,
        name=state.name,
        service=state.labels.get(SERVICE_LABEL, ""),
        state=state.status,
    )


async def handle_images(ctx: RequestContext, args: ImagesArgs) -> BaseModel:
    agent = ctx.agent
    async with ctx.keepalive("images", "listing images"):
        images = await agent.in_engine(
            agent.engine.list_images, args.all, timeout=agent.long_timeout
        )
    return ImagesResult(images=images)


async def handle_logs(ctx: RequestContext, args: LogsArgs) -> BaseModel:
    container = await resolve_target(ctx, args.target)
    since = time.time() - args.since if args.since is not None else None
    if args.follow:
        return await _follow_logs(ctx, args, container, since)
    agent = ctx.agent
    async with ctx.keepalive("logs", f"reading logs of {container.name}"):
        lines = await agent.in_engine(
            agent.engine.read_logs, container.id, args.tail, since, timeout=agent.long_timeout
        )
    kept: list[LogLine] = []
    size = 0
    for line in reversed(lines[-args.tail :] if args.tail else []):
        size += len(line.text) + 40
        if size > MAX_LOG_BYTES:
            break
        kept.append(line)
    kept.reverse()
    return LogsResult(
        container=container_ref(container),
        lines=kept,
        truncated=len(kept) < min(len(lines), args.tail),
    )


async def _follow_logs(
    ctx: RequestContext, args: LogsArgs, container: ContainerState, since: float | None
) -> LogsResult:
    agent = ctx.agent
    follows = _follows(agent)
    assert args.stream_id is not None  # checked by LogsArgs
    ref = container_ref(container)
    if args.stream_id in follows.cancelled:
        return LogsResult(container=ref, ended="cancelled")
    if len(follows.active) >= MAX_FOLLOWS:
        raise Busy(f"this agent already streams {len(follows.active)} logs; try again later")
    engine_stream = await agent.in_engine(agent.engine.follow_logs, container.id, args.tail, since)
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + args.max_duration
    streamed = 0
    ended = ""
    stream: ThreadedStream[LogLine] = ThreadedStream(
        engine_stream, name=f"shoal-logs-{args.stream_id[:8]}"
    )
    # A followed log may last an hour: it gives back its request slot meanwhile, so
    # that a few long streams never block the agent's other requests (MAX_FOLLOWS
    # bounds them).
    async with stream, agent.outside_request_slot():
        follows.active[args.stream_id] = stream
        try:
            await ctx.progress(LOG_KEEPALIVE_PHASE, f"following {container.name}")
            while not ended:
                try:
                    lines = await stream.batch(args.keepalive)
                except StreamClosed:
                    if stream.closed:
                        ended = "cancelled"  # whatever closing the engine stream raised
                    elif stream.error is not None:
                        raise stream.error from None
                    else:
                        ended = await _why_ended(agent, container)
                    break
                if lines:
                    for message in encode_log_lines(lines):
                        await ctx.progress(LOG_PHASE, message)
                    streamed += len(lines)
                else:
                    await ctx.progress(LOG_KEEPALIVE_PHASE)
                if loop.time() >= stop_at:
                    ended = f"time limit ({args.max_duration:g}s)"
                elif agent.stopping:
                    ended = "the agent is stopping"
        finally:
            follows.active.pop(args.stream_id, None)
    log.info(
        "logs stream %s of %s ended (%s) after %d lines",
        args.stream_id,
        container.name,
        ended,
        streamed,
    )
    return LogsResult(container=ref, streamed=streamed, ended=ended)


async def _why_ended(agent: Agent, container: ContainerState) -> str:
    """Why the engine ended a log stream; raises DockerUnavailable if the engine went away."""
    try:
        now = await agent.in_engine(agent.engine.container_state, container.id)
    except NotFound:
        return "the container was removed"
    return "the engine ended the stream" if now.running else "the container stopped"


async def handle_cancel(ctx: RequestContext, args: CancelArgs) -> BaseModel:
    stream = _follows(ctx.agent).cancel(args.stream_id)
    if stream is None:
        return CancelResult(stream_id=args.stream_id, cancelled=False)
    await stream.close()
    return CancelResult(stream_id=args.stream_id, cancelled=True)


async def handle_stats(ctx: RequestContext, args: StatsArgs) -> BaseModel:
    agent = ctx.agent
    async with ctx.keepalive("stats", "sampling running containers"):
        return await agent.in_engine(agent.engine.container_stats, timeout=agent.long_timeout)


async def handle_inspect(ctx: RequestContext, args: InspectArgs) -> BaseModel:
    agent = ctx.agent
    container = await resolve_target(ctx, args.target)
    details = await agent.in_engine(agent.engine.inspect_container, container.id)
    return InspectResult(container=container_ref(container), details=details)


async def handle_info(ctx: RequestContext, args: InfoArgs) -> BaseModel:
    return await ctx.agent.in_engine(ctx.agent.engine.engine_details)


MAX_PAST_EVENTS = 1000


async def handle_events(ctx: RequestContext, args: EventsArgs) -> BaseModel:
    agent = ctx.agent
    now = time.time()
    records = await agent.in_engine(agent.engine.past_container_events, now - args.since, now)
    return EventsResult(events=[container_event(agent, r) for r in records[-MAX_PAST_EVENTS:]])


async def _container_action(
    ctx: RequestContext,
    action: Literal["start", "stop", "restart", "rm"],
    target: str,
    act: Callable[[ContainerState], Awaitable[None]],
) -> ContainerActionResult:
    """Resolve, act, report; a service's container waits for no deploy of that service."""
    agent = ctx.agent
    container = await resolve_target(ctx, target)
    service = container.labels.get(SERVICE_LABEL, "")
    with agent.deployer.claim(service, ctx.request.id) if service else nullcontext():
        await ctx.progress(action, f"{action} {container.name}")
        await act(container)
        if action == "rm":
            after = "removed"
        else:
            after = (await agent.in_engine(agent.engine.container_state, container.id)).status
    return ContainerActionResult(
        action=action,
        container=container_ref(container),
        before=container.status,
        after=after,
        changed=action in ("restart", "rm") or after != container.status,
    )


async def _stop_timeout(agent: Agent, container: ContainerState, given: int | None) -> int:
    """The given timeout, else the container's own (docker's default: 10 seconds)."""
    if given is not None:
        return given
    details = await agent.in_engine(agent.engine.inspect_container, container.id)
    configured = (details.get("Config") or {}).get("StopTimeout")
    return int(configured) if isinstance(configured, int) and configured >= 0 else 10


async def handle_start(ctx: RequestContext, args: StartArgs) -> BaseModel:
    agent = ctx.agent

    async def act(container: ContainerState) -> None:
        await agent.in_engine(agent.engine.start_container, container.id)

    return await _container_action(ctx, "start", args.target, act)


async def handle_stop(ctx: RequestContext, args: StopArgs) -> BaseModel:
    agent = ctx.agent

    async def act(container: ContainerState) -> None:
        timeout = await _stop_timeout(agent, container, args.timeout)
        async with ctx.keepalive("stop", f"stopping {container.name}"):
            await agent.in_engine(
                agent.engine.stop_container, container.id, timeout, timeout=timeout + 30
            )

    return await _container_action(ctx, "stop", args.target, act)


async def handle_restart(ctx: RequestContext, args: RestartArgs) -> BaseModel:
    agent = ctx.agent

    async def act(container: ContainerState) -> None:
        timeout = await _stop_timeout(agent, container, args.timeout)
        async with ctx.keepalive("restart", f"restarting {container.name}"):
            await agent.in_engine(
                agent.engine.restart_container, container.id, timeout, timeout=timeout + 30
            )

    return await _container_action(ctx, "restart", args.target, act)


async def handle_rm(ctx: RequestContext, args: RmArgs) -> BaseModel:
    agent = ctx.agent

    async def act(container: ContainerState) -> None:
        await agent.in_engine(
            functools.partial(
                agent.engine.delete_container, force=args.force, volumes=args.volumes
            ),
            container.id,
            timeout=agent.long_timeout,
        )

    return await _container_action(ctx, "rm", args.target, act)


HANDLERS[Verb.IMAGES] = handle_images
HANDLERS[Verb.LOGS] = handle_logs
HANDLERS[Verb.CANCEL] = handle_cancel
HANDLERS[Verb.STATS] = handle_stats
HANDLERS[Verb.INSPECT] = handle_inspect
HANDLERS[Verb.INFO] = handle_info
HANDLERS[Verb.EVENTS] = handle_events
HANDLERS[Verb.START] = handle_start
HANDLERS[Verb.STOP] = handle_stop
HANDLERS[Verb.RESTART] = handle_restart
HANDLERS[Verb.RM] = handle_rm

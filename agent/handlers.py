"""One handler per verb. A handler gets a context and typed args, returns a typed result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agent.prune import PrunePlan, Removal, disk_usage, plan_prune
from protocol import (
    DeployArgs,
    DfArgs,
    DockerUnavailable,
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
    RollbackArgs,
    ServicesArgs,
    ShoalError,
    StatusArgs,
    StatusResult,
    Verb,
    utcnow,
)

if TYPE_CHECKING:
    from agent.runtime import Agent


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

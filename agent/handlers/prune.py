"""Disk usage and prune: plan against the keep rules, then remove one object at a time."""

from __future__ import annotations

from pydantic import BaseModel

from shoal.protocol import (
    DfArgs,
    DockerUnavailable,
    PruneArgs,
    PrunedItem,
    PruneFailure,
    PruneKind,
    PruneKindResult,
    PruneResult,
    ShoalError,
    Verb,
    utcnow,
)

from ..context import Handler, RequestContext
from ..prune import PrunePlan, Removal, disk_usage, plan_prune


async def handle_df(ctx: RequestContext, args: DfArgs) -> BaseModel:
    async with ctx.keepalive("df", "reading disk usage"):
        snapshot = await ctx.calls.run(ctx.engine.disk_snapshot, timeout=ctx.calls.long_timeout)
    return disk_usage(snapshot)


async def handle_prune(ctx: RequestContext, args: PruneArgs) -> BaseModel:
    """Plan against the rules, then (unless a dry run) remove one object at a time.

    Progress is sent per object, so a long prune is never mistaken for a silent
    host. If the engine goes away midway, the error carries what was removed.
    """
    async with ctx.keepalive("planning", "reading disk usage"):
        snapshot = await ctx.calls.run(ctx.engine.disk_snapshot, timeout=ctx.calls.long_timeout)
    plan = plan_prune(snapshot, args, ctx.host.keep_rules(), utcnow())
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
                        count, reclaimed = await ctx.calls.run(
                            ctx.engine.prune_build_cache, args.until, timeout=ctx.calls.long_timeout
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
                    await _remove(ctx, removal)
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


async def _remove(ctx: RequestContext, removal: Removal) -> None:
    engine = ctx.engine
    match removal.kind:
        case PruneKind.CONTAINERS:
            await ctx.calls.run(engine.remove_container, removal.id)
        case PruneKind.IMAGES:
            # An image with several tags is untagged one tag at a time; the last goes.
            refs = [*removal.tags[:-1], removal.id] if len(removal.tags) > 1 else [removal.id]
            for ref in refs:
                await ctx.calls.run(engine.remove_image, ref)
        case PruneKind.VOLUMES:
            await ctx.calls.run(engine.remove_volume, removal.id)
        case PruneKind.NETWORKS:
            await ctx.calls.run(engine.remove_network, removal.id)
        case _:
            raise ValueError(f"cannot remove {removal.kind}")


HANDLERS: dict[Verb, Handler] = {Verb.DF: handle_df, Verb.PRUNE: handle_prune}

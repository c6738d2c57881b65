"""Everyday container verbs: ps, images, stats, inspect, start, stop, restart, rm."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Literal

from pydantic import BaseModel

from shoal.protocol import (
    SERVICE_LABEL,
    ContainerActionResult,
    ContainerRef,
    ImagesArgs,
    ImagesResult,
    InspectArgs,
    InspectResult,
    NotFound,
    PsArgs,
    PsResult,
    RestartArgs,
    RmArgs,
    StartArgs,
    StatsArgs,
    StopArgs,
    Verb,
)
from shoal.protocol.service import SERVICE_NAME_PATTERN

from ..beats import current_container
from ..context import Handler, RequestContext
from ..engine import ContainerState


async def handle_ps(ctx: RequestContext, args: PsArgs) -> BaseModel:
    containers = await ctx.calls.run(ctx.engine.list_containers, args)
    return PsResult(containers=containers)


async def resolve_target(ctx: RequestContext, target: str) -> ContainerState:
    """A service's current container if a service of that name is here, else the container."""
    if re.fullmatch(SERVICE_NAME_PATTERN, target):
        containers = await ctx.calls.run(ctx.engine.service_containers, target)
        record = ctx.host.services.get(target)
        if containers or record is not None:
            current = current_container(containers, record)
            if current is None:
                raise NotFound(
                    f"service {target!r} has no container on host {ctx.host_id}",
                    detail={"service": target},
                )
            return current
    try:
        return await ctx.calls.run(ctx.engine.container_state, target)
    except NotFound:
        raise NotFound(
            f"no container or service named {target!r} on host {ctx.host_id}",
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
    async with ctx.keepalive("images", "listing images"):
        images = await ctx.calls.run(
            ctx.engine.list_images, args.all, timeout=ctx.calls.long_timeout
        )
    return ImagesResult(images=images)


async def handle_stats(ctx: RequestContext, args: StatsArgs) -> BaseModel:
    async with ctx.keepalive("stats", "sampling running containers"):
        return await ctx.calls.run(ctx.engine.container_stats, timeout=ctx.calls.long_timeout)


async def handle_inspect(ctx: RequestContext, args: InspectArgs) -> BaseModel:
    container = await resolve_target(ctx, args.target)
    details = await ctx.calls.run(ctx.engine.inspect_container, container.id)
    return InspectResult(container=container_ref(container), details=details)


async def _container_action(
    ctx: RequestContext,
    action: Literal["start", "stop", "restart", "rm"],
    target: str,
    act: Callable[[ContainerState], Awaitable[None]],
) -> ContainerActionResult:
    """Resolve, act, report; a service's container waits for no deploy of that service."""
    container = await resolve_target(ctx, target)
    service = container.labels.get(SERVICE_LABEL, "")
    with ctx.host.locks.claim(service, ctx.request.id) if service else nullcontext():
        await ctx.progress(action, f"{action} {container.name}")
        await act(container)
        if action == "rm":
            after = "removed"
        else:
            after = (await ctx.calls.run(ctx.engine.container_state, container.id)).status
    return ContainerActionResult(
        action=action,
        container=container_ref(container),
        before=container.status,
        after=after,
        changed=action in ("restart", "rm") or after != container.status,
    )


async def _stop_timeout(ctx: RequestContext, container: ContainerState, given: int | None) -> int:
    """The given timeout, else the container's own (docker's default: 10 seconds)."""
    if given is not None:
        return given
    details = await ctx.calls.run(ctx.engine.inspect_container, container.id)
    configured = (details.get("Config") or {}).get("StopTimeout")
    return int(configured) if isinstance(configured, int) and configured >= 0 else 10


async def handle_start(ctx: RequestContext, args: StartArgs) -> BaseModel:
    async def act(container: ContainerState) -> None:
        await ctx.calls.run(ctx.engine.start_container, container.id)

    return await _container_action(ctx, "start", args.target, act)


async def handle_stop(ctx: RequestContext, args: StopArgs) -> BaseModel:
    return await _stop_or_restart(ctx, "stop", args.target, args.timeout)


async def handle_restart(ctx: RequestContext, args: RestartArgs) -> BaseModel:
    return await _stop_or_restart(ctx, "restart", args.target, args.timeout)


async def _stop_or_restart(
    ctx: RequestContext, action: Literal["stop", "restart"], target: str, given: int | None
) -> ContainerActionResult:
    """Stop or restart with the container's own grace period unless one is given."""
    call = ctx.engine.stop_container if action == "stop" else ctx.engine.restart_container
    doing = "stopping" if action == "stop" else "restarting"

    async def act(container: ContainerState) -> None:
        timeout = await _stop_timeout(ctx, container, given)
        async with ctx.keepalive(action, f"{doing} {container.name}"):
            await ctx.calls.run(call, container.id, timeout, timeout=timeout + 30)

    return await _container_action(ctx, action, target, act)


async def handle_rm(ctx: RequestContext, args: RmArgs) -> BaseModel:
    async def act(container: ContainerState) -> None:
        await ctx.calls.run(
            functools.partial(ctx.engine.remove_container, force=args.force, volumes=args.volumes),
            container.id,
            timeout=ctx.calls.long_timeout,
        )

    return await _container_action(ctx, "rm", args.target, act)


HANDLERS: dict[Verb, Handler] = {
    Verb.PS: handle_ps,
    Verb.IMAGES: handle_images,
    Verb.STATS: handle_stats,
    Verb.INSPECT: handle_inspect,
    Verb.START: handle_start,
    Verb.STOP: handle_stop,
    Verb.RESTART: handle_restart,
    Verb.RM: handle_rm,
}

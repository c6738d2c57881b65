"""Verbs about the host and the agent itself: ping, status, info, events."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from shoal.protocol import (
    EventsArgs,
    EventsResult,
    InfoArgs,
    PingArgs,
    StatusArgs,
    StatusResult,
    Verb,
)

from ..context import Handler, RequestContext
from ..streams import container_event


async def handle_ping(ctx: RequestContext, args: PingArgs) -> BaseModel:
    if ctx.request.target.host is None:
        # A broadcast ping is how a controller discovers hosts: a heartbeat too, so that a
        # registry created after this agent started learns of it now.
        ctx.host.keep_task(asyncio.create_task(ctx.host.announce()))
    return await ctx.host.current_facts()


async def handle_status(ctx: RequestContext, args: StatusArgs) -> BaseModel:
    entry = ctx.host.journal.get(args.request_id)
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


async def handle_info(ctx: RequestContext, args: InfoArgs) -> BaseModel:
    return await ctx.calls.run(ctx.engine.engine_details)


MAX_PAST_EVENTS = 1000


async def handle_events(ctx: RequestContext, args: EventsArgs) -> BaseModel:
    now = time.time()
    records = await ctx.calls.run(ctx.engine.past_container_events, now - args.since, now)
    return EventsResult(
        events=[
            container_event(ctx.host_id, ctx.host.instance, r) for r in records[-MAX_PAST_EVENTS:]
        ]
    )


HANDLERS: dict[Verb, Handler] = {
    Verb.PING: handle_ping,
    Verb.STATUS: handle_status,
    Verb.INFO: handle_info,
    Verb.EVENTS: handle_events,
}

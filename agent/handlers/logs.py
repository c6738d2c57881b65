"""Container logs, read or followed as progress, and the cancel that ends a followed log."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict

from pydantic import BaseModel

from shoal.protocol import (
    LOG_KEEPALIVE_PHASE,
    LOG_PHASE,
    Busy,
    CancelArgs,
    CancelResult,
    LogLine,
    LogsArgs,
    LogsResult,
    NotFound,
    Verb,
    encode_log_lines,
)

from ..context import Handler, HostContext, RequestContext
from ..engine import ContainerState
from ..streams import StreamClosed, ThreadedStream
from .containers import container_ref, resolve_target

log = logging.getLogger("shoal.agent")


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


_FOLLOWS: weakref.WeakKeyDictionary[HostContext, _Follows] = weakref.WeakKeyDictionary()


def _follows(host: HostContext) -> _Follows:
    follows = _FOLLOWS.get(host)
    if follows is None:
        follows = _FOLLOWS[host] = _Follows()
    return follows


async def handle_logs(ctx: RequestContext, args: LogsArgs) -> BaseModel:
    container = await resolve_target(ctx, args.target)
    since = time.time() - args.since if args.since is not None else None
    if args.follow:
        return await _follow_logs(ctx, args, container, since)
    async with ctx.keepalive("logs", f"reading logs of {container.name}"):
        lines = await ctx.calls.run(
            ctx.engine.read_logs, container.id, args.tail, since, timeout=ctx.calls.long_timeout
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
    follows = _follows(ctx.host)
    assert args.stream_id is not None  # checked by LogsArgs
    ref = container_ref(container)
    if args.stream_id in follows.cancelled:
        return LogsResult(container=ref, ended="cancelled")
    if len(follows.active) >= MAX_FOLLOWS:
        raise Busy(f"this agent already streams {len(follows.active)} logs; try again later")
    engine_stream = await ctx.calls.run(ctx.engine.follow_logs, container.id, args.tail, since)
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
    async with stream, ctx.host.outside_request_slot():
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
                        ended = await _why_ended(ctx, container)
                    break
                if lines:
                    for message in encode_log_lines(lines):
                        await ctx.progress(LOG_PHASE, message)
                    streamed += len(lines)
                else:
                    await ctx.progress(LOG_KEEPALIVE_PHASE)
                if loop.time() >= stop_at:
                    ended = f"time limit ({args.max_duration:g}s)"
                elif ctx.stopping:
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


async def _why_ended(ctx: RequestContext, container: ContainerState) -> str:
    """Why the engine ended a log stream; raises DockerUnavailable if the engine went away."""
    try:
        now = await ctx.calls.run(ctx.engine.container_state, container.id)
    except NotFound:
        return "the container was removed"
    return "the engine ended the stream" if now.running else "the container stopped"


async def handle_cancel(ctx: RequestContext, args: CancelArgs) -> BaseModel:
    stream = _follows(ctx.host).cancel(args.stream_id)
    if stream is None:
        return CancelResult(stream_id=args.stream_id, cancelled=False)
    await stream.close()
    return CancelResult(stream_id=args.stream_id, cancelled=True)


HANDLERS: dict[Verb, Handler] = {Verb.LOGS: handle_logs, Verb.CANCEL: handle_cancel}

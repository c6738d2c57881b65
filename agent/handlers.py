"""One handler per verb. A handler gets a context and typed args, returns a typed result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from protocol import PingArgs, PsArgs, PsResult, Request, Verb

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

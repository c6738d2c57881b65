"""What a request handler may use: its request, progress to the caller, and the host's parts.

Handlers get a :class:`RequestContext`, never the agent itself, so that a handler module
can be read (and tested) knowing only the narrow :class:`HostContext` below.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from shoal.protocol import AgentFacts, Progress, Request

from .calls import EngineCalls
from .engine import Engine
from .files import FileStore
from .journal import RequestJournal
from .locks import ServiceLocks
from .store import ServiceStore

if TYPE_CHECKING:
    from .policy import Policy
    from .prune import KeepRules


@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class HostContext:
    """The parts of an agent that its handlers share; built once the agent knows its host id."""

    host_id: str
    instance: str
    engine: Engine
    calls: EngineCalls
    journal: RequestJournal
    services: ServiceStore
    locks: ServiceLocks
    is_stopping: Callable[[], bool]
    """True once a stop was asked for: long-running handlers wind up."""
    outside_request_slot: Callable[[], AbstractAsyncContextManager[None]]
    """Gives the request's concurrency slot back while in the block (for requests that wait)."""
    keep_task: Callable[[asyncio.Task[None]], None]
    """Keeps a fire-and-forget task referenced until it ends."""
    facts: Callable[[], AgentFacts]
    current_facts: Callable[[], Awaitable[AgentFacts]]
    """Facts after probing the engine again."""
    policy: Callable[[], Policy]
    keep_rules: Callable[[], KeepRules]
    files: FileStore
    """Secret and config files, and the key their values are sealed to."""
    announce: Callable[[], Coroutine[Any, Any, None]]
    """Publish a heartbeat now (at most once a second): a broadcast ping asks for one."""
    services_changed: Callable[[], None]
    """A deploy, rollback or removal changed the services: a heartbeat soon says so."""
    restart: Callable[[str], None]
    """Stop once the requests in flight are answered, and exit 75 (``RESTART_EXIT``) for
    the service manager to start the agent again: after pointing it at a new version."""


class RequestContext:
    """One request being served: the request, its host's parts, and progress to the caller."""

    def __init__(
        self,
        host: HostContext,
        request: Request,
        send: Callable[[BaseModel], Awaitable[None]],
    ) -> None:
        self.host = host
        self.request = request
        self._send = send
        self._seq = 0

    @property
    def host_id(self) -> str:
        return self.host.host_id

    @property
    def engine(self) -> Engine:
        return self.host.engine

    @property
    def calls(self) -> EngineCalls:
        return self.host.calls

    @property
    def stopping(self) -> bool:
        return self.host.is_stopping()

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
        await self._send(
            Progress(
                id=self.request.id,
                host=self.host_id,
                seq=self._seq,
                phase=phase,
                message=message,
                current=current,
                total=total,
            )
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
        self.host.keep_task(task)

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
"""A verb's handler: typed arguments in, a typed result out; a ShoalError becomes the reply."""

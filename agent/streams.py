"""Engine streams read from a thread of their own, and container events as published.

Kept apart from :mod:`agent.handlers`: the idle agent's container-event watch needs
these, and nothing else of the handlers, which load on the first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Generic, TypeVar

from shoal.protocol import AgentEvent, EventKind, ShoalError

from .engine import ContainerEventRecord, Stream

log = logging.getLogger("shoal.agent")
T = TypeVar("T")


class StreamClosed(ShoalError):
    """Raised by :meth:`ThreadedStream.batch` once the stream ended and was read to the end."""


class ThreadedStream(Generic[T]):
    """Iterate a blocking engine stream in a thread of its own; read it in batches.

    The thread waits while ``limit`` items are unread, so a chatty container cannot
    fill the agent's memory. Closing (from the event loop) closes the engine stream,
    which ends the iteration in the thread.
    """

    def __init__(self, stream: Stream[T], *, name: str, limit: int = 10_000) -> None:
        self._stream = stream
        self._limit = limit
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._done = False
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    async def __aenter__(self) -> ThreadedStream[T]:
        self._thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self) -> None:
        try:
            for item in self._stream:
                with self._cond:
                    while len(self._items) >= self._limit and not self._closed:
                        self._cond.wait(0.5)
                    if self._closed:
                        break
                    self._items.append(item)
                self._wake()
        except ShoalError as exc:
            self.error = exc
        except Exception as exc:
            log.exception("engine stream %s failed", self._thread.name)
            self.error = exc
        finally:
            with self._cond:
                self._done = True
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads anymore
            self._loop.call_soon_threadsafe(self._ready.set)

    async def batch(self, timeout: float, max_items: int = 500) -> list[T]:
        """What arrived, waiting up to ``timeout`` seconds for a first item ([] if none).

        Raises :class:`StreamClosed` once the stream ended and everything was read.
        """
        with self._cond:
            wait = not self._items and not self._done
            if wait:
                self._ready.clear()
        if wait:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        with self._cond:
            count = min(max_items, len(self._items))
            items = [self._items.popleft() for _ in range(count)]
            ended = self._done and not self._items
            self._cond.notify_all()
        if not items and ended:
            raise StreamClosed("the stream ended and was read to the end")
        return items

    async def close(self) -> None:
        """Close the engine stream and let the thread end (bounded wait); idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stream.close()
        if self._thread.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)


def container_event(host_id: str, instance: str, record: ContainerEventRecord) -> AgentEvent:
    """An engine's container event as the agent publishes it."""
    info = record.info
    what = info.name or info.id[:12]
    message = f"{info.action} {what}"
    if info.exit_code is not None and info.action == "die":
        message += f", exit code {info.exit_code}"
    return AgentEvent(
        host_id=host_id,
        instance=instance,
        kind=EventKind.CONTAINER,
        at=datetime.fromtimestamp(record.time_nano / 1e9, UTC),
        message=message,
        container=info,
    )

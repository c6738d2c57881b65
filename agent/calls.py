"""Engine calls from the event loop: a bounded thread pool and a time limit per call.

The Docker SDK is synchronous; every call runs in the pool so that no request and no
NATS callback ever blocks the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shoal.protocol import OperationTimeout

T = TypeVar("T")


class EngineCalls:
    """Runs blocking engine calls in its own pool, each with a time limit."""

    def __init__(self, workers: int, *, timeout: float, long_timeout: float) -> None:
        self.timeout = timeout
        self.long_timeout = long_timeout
        """The limit of the slow calls (pull, prune, disk usage)."""
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shoal-engine")

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``fn(*args)`` in the pool; OperationTimeout past ``timeout`` (default: the usual)."""
        limit = timeout if timeout is not None else self.timeout
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError as exc:
            raise OperationTimeout(f"the Docker engine did not answer within {limit:g}s") from exc

    def shutdown(self) -> None:
        """Drop queued calls; running ones end on their own (the engine is closed next)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

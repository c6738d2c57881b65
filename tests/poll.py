"""The one poll-with-deadline helper of the tests, in a blocking and an async flavour.

A check is done when it returns anything but ``None`` or ``False``, and that value is
handed back, so one helper serves both "wait until true" and "wait for a value".
At the deadline it fails loudly with what it waited for, the last value seen and
the last error the check raised (when told to wait such errors out).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_DEADLINE = 20.0


def _done(value: object) -> bool:
    return value is not None and value is not False


def _failure_text(
    what: str,
    deadline: float,
    last: object,
    error: BaseException | None,
    context: Callable[[], str] | None,
) -> str:
    text = f"timed out after {deadline:g}s waiting for {what} (last seen: {last!r})"
    if error is not None:
        text += f" (last error: {error!r})"
    if context is not None:
        text += "\n" + context()
    return text


def poll(
    what: str,
    check: Callable[[], T | None],
    deadline: float = DEFAULT_DEADLINE,
    *,
    interval: float = 0.1,
    ignore: tuple[type[BaseException], ...] = (),
    abort: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
    failure: type[Exception] = AssertionError,
) -> T:
    """Call ``check`` until it returns a value (not None or False) and return that.

    ``ignore`` names errors of the check to wait out; ``abort`` returns a reason to
    stop before the deadline (a process that exited); ``context`` adds to the failure
    text (a log tail); ``failure`` is the exception raised.
    """
    end = time.monotonic() + deadline
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = check()
        except ignore as exc:
            error = exc
        else:
            if _done(value):
                assert value is not None
                return value
            last = value
        reason = abort() if abort is not None else None
        if reason is not None:
            raise failure(f"{what}: {reason}" + ("\n" + context() if context else ""))
        if time.monotonic() >= end:
            raise failure(_failure_text(what, deadline, last, error, context))
        time.sleep(interval)


async def apoll(
    what: str,
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    deadline: float = DEFAULT_DEADLINE,
    *,
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """:func:`poll` on the event loop: ``check`` may be a plain or an async function."""
    end = time.monotonic() + deadline
    last: object = None
    error: BaseException | None = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            error = exc
        else:
            if _done(value):
                return value  # type: ignore[return-value]
            last = value
        if time.monotonic() >= end:
            raise AssertionError(_failure_text(what, deadline, last, error, context))
        await asyncio.sleep(interval)

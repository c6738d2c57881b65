"""Fleet.close() on a connection NATS cut off (a fake client: the seam is the nats-py
client under the transport's Connection)."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from shoal.controller import Fleet
from shoal.controller.transport import Connection


class CutOffConnection:
    """A client whose server went away: drain fails, close ends in a cancelled waiter."""

    def __init__(self, close_error: BaseException | None) -> None:
        self.close_error = close_error
        self.is_closed = False
        self.closed = 0

    async def drain(self) -> None:
        raise nats.errors.ConnectionClosedError

    async def close(self) -> None:
        self.closed += 1
        self.is_closed = True
        if self.close_error is not None:
            raise self.close_error


def fleet_with(nc: CutOffConnection) -> Fleet:
    fleet = Fleet()
    fleet._nc = Connection(nc)  # type: ignore[arg-type]
    return fleet


async def test_a_cancelled_close_waiter_does_not_escape() -> None:
    nc = CutOffConnection(asyncio.CancelledError())
    fleet = fleet_with(nc)
    await fleet.close()
    assert nc.closed == 1
    await fleet.close()  # twice is fine
    assert nc.closed == 1


async def test_a_real_cancellation_still_propagates() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    class SlowClose(CutOffConnection):
        async def close(self) -> None:
            entered.set()
            await release.wait()

    fleet = fleet_with(SlowClose(None))
    task = asyncio.create_task(fleet.close())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_other_close_errors_are_not_swallowed() -> None:
    fleet = fleet_with(CutOffConnection(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        await fleet.close()

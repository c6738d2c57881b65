"""flush_in_order (the agent's and the controller's) on a real nats-server."""

from __future__ import annotations

import asyncio

import nats
import pytest

from shoal.controller.transport import flush_in_order
from tests.stack import NatsServer

pytestmark = pytest.mark.nats


async def test_subscriptions_are_visible_to_other_connections_once_flushed_in_order(
    nats_server: NatsServer,
) -> None:
    """What an agent's start relies on: after flush_in_order, a request from another
    connection finds the new subscriptions (no 'no responders'), every time.

    nats-py's flush() alone writes its PING ahead of the queued SUBs; on a busy
    machine this loop then failed a few times in a hundred.
    """
    responder = await nats.connect(nats_server.url, allow_reconnect=False)
    requester = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        for i in range(100):
            subject = f"test.flush-in-order.{i}"

            async def answer(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(b"here")

            subs = [await responder.subscribe(f"{subject}.{n}", cb=answer) for n in range(3)]
            await flush_in_order(responder)
            for n in range(3):
                reply = await requester.request(f"{subject}.{n}", b"?", timeout=5)
                assert reply.data == b"here"
            for sub in subs:
                await sub.unsubscribe()
    finally:
        await asyncio.gather(responder.close(), requester.close())

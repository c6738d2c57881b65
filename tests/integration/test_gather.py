"""Scatter-gather against hand-written responders on a real NATS server."""

from __future__ import annotations

import nats
import pytest
from nats.aio.msg import Msg

from shoal.controller.gather import gather_replies
from shoal.controller.transport import Connection
from shoal.protocol import Reply, Subjects, utcnow
from tests.stack import NatsServer

pytestmark = pytest.mark.nats
SUBJECTS = Subjects()


def reply_for(host: str, request_id: str, value: str) -> bytes:
    reply = Reply(
        id=request_id,
        host=host,
        ok=True,
        result={"value": value},
        started_at=utcnow(),
        duration=0.0,
    )
    return reply.model_dump_json().encode()


async def test_a_host_cannot_answer_in_another_hosts_name(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:

        async def liar(msg: Msg) -> None:
            request_id = msg.data.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
            # First a forged answer for the victim, on the liar's own reply subject...
            await nc.publish(msg.reply, reply_for("g-victim", request_id, "forged"))
            await nc.publish(msg.reply, reply_for("g-liar", request_id, "liar"))

        async def victim(msg: Msg) -> None:
            request_id = msg.data.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
            await nc.publish(msg.reply, reply_for("g-victim", request_id, "genuine"))

        await nc.subscribe(SUBJECTS.host("g-liar", "ps"), cb=liar)
        await nc.subscribe(SUBJECTS.host("g-victim", "ps"), cb=victim)
        await nc.flush()
        gathered = await gather_replies(
            Connection(nc), SUBJECTS, "ps", {}, ["g-liar", "g-victim"], timeout=5
        )
        assert gathered.missing == []
        assert gathered.replies["g-victim"].result == {"value": "genuine"}
        assert gathered.replies["g-liar"].result == {"value": "liar"}
    finally:
        await nc.close()


async def test_silent_hosts_are_named_and_the_wait_ends_when_all_answered(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:

        async def answer(msg: Msg) -> None:
            request_id = msg.data.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
            await nc.publish(msg.reply, reply_for("g-up", request_id, "ok"))

        await nc.subscribe(SUBJECTS.host("g-up", "ps"), cb=answer)
        await nc.flush()
        gathered = await gather_replies(
            Connection(nc), SUBJECTS, "ps", {}, ["g-up", "g-down"], timeout=30
        )
        assert list(gathered.replies) == ["g-up"] and gathered.missing == ["g-down"]
        # Nothing listens on g-down's subject: the server says so and nobody waits for it.
        assert gathered.no_responders == ["g-down"]
        assert gathered.duration < 10
    finally:
        await nc.close()

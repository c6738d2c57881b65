"""One validation per reply (controller/gather.py with a result model): the envelope and the
verb's result are validated together, and an invalid reply is still reported for its host as
``invalid_reply``, never dropped, never a crash. Hand-written responders on a real NATS."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from shoal.controller import Fleet
from shoal.controller.gather import gather_replies
from shoal.controller.transport import Connection
from shoal.protocol import (
    ContainerSummary,
    ErrorCode,
    ErrorInfo,
    NatsOptions,
    PsResult,
    Reply,
    Selector,
    Subjects,
    utcnow,
)
from tests.factories import heartbeat
from tests.poll import apoll
from tests.stack import NatsServer

pytestmark = pytest.mark.nats
PREFIX = "perfgather"
SUBJECTS = Subjects(PREFIX)
T0 = datetime(2026, 1, 1, tzinfo=UTC)

CONTAINER = ContainerSummary(
    id="c" * 64, name="web", image="busybox", created=T0, state="running", status="Up"
).model_dump(mode="json")


def reply(host: str, request_id: str, **fields: Any) -> bytes:
    document: dict[str, Any] = {
        "v": 1,
        "kind": "reply",
        "id": request_id,
        "host": host,
        "ok": True,
        "started_at": utcnow().isoformat(),
        "duration": 0.001,
    }
    document.update(fields)
    return json.dumps(document).encode()


Answer = Callable[[str, str], bytes]

ANSWERS: dict[str, Answer] = {
    "pg-good": lambda h, i: reply(h, i, result={"containers": [CONTAINER]}),
    "pg-empty": lambda h, i: reply(h, i, result={"containers": []}),
    "pg-bad-result": lambda h, i: reply(h, i, result={"containers": [{"id": 5}]}),
    "pg-no-result": lambda h, i: reply(h, i),  # ok, but PsResult needs its containers
    "pg-failed": lambda h, i: reply(
        h,
        i,
        ok=False,
        error={"code": "docker_unavailable", "message": "engine gone"},
        result={"containers": "not checked on a failed reply"},
    ),
    "pg-garbage": lambda h, i: b"not json at all",
    "pg-bad-envelope": lambda h, i: reply(h, i, started_at="yesterday"),
    "pg-not-ours": lambda h, i: reply(h, "x" * 32, result={"containers": [{"id": 5}]}),
}
ANSWERING = sorted(ANSWERS)
INVALID = {"pg-bad-result", "pg-no-result", "pg-garbage", "pg-bad-envelope"}


async def serve(nc: NATS) -> None:
    for host, answer in ANSWERS.items():

        async def respond(msg: Msg, host: str = host, answer: Answer = answer) -> None:
            request_id = json.loads(msg.data)["id"]
            await nc.publish(msg.reply, answer(host, request_id))

        await nc.subscribe(SUBJECTS.host(host, "ps"), cb=respond)
    await nc.flush()


async def test_results_are_typed_in_one_pass_and_invalid_ones_are_kept(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await serve(nc)
        seen: list[Reply] = []
        gathered = await gather_replies(
            Connection(nc),
            SUBJECTS,
            "ps",
            {},
            ANSWERING,
            timeout=2,
            result_model=PsResult,
            on_reply=seen.append,
        )
        assert set(gathered.results) == {"pg-good", "pg-empty"}
        good = gathered.results["pg-good"]
        assert isinstance(good, PsResult) and good.containers[0].name == "web"
        assert set(gathered.invalid_results) == {"pg-bad-result", "pg-no-result"}
        assert "malformed" in gathered.invalid_results["pg-bad-result"]
        assert set(gathered.malformed) == {"pg-garbage", "pg-bad-envelope"}
        assert gathered.missing == ["pg-not-ours"]  # a reply to another request is not its
        assert set(gathered.replies) == {
            "pg-good",
            "pg-empty",
            "pg-bad-result",
            "pg-no-result",
            "pg-failed",
        }
        failed = gathered.replies["pg-failed"]
        assert not failed.ok and failed.error is not None
        assert failed.error.code == ErrorCode.DOCKER_UNAVAILABLE
        # Callbacks still get a plain Reply with the result as a JSON object.
        by_host = {r.host: r for r in seen}
        assert by_host["pg-good"].result == PsResult.model_validate(
            {"containers": [CONTAINER]}
        ).model_dump(mode="json")
        assert by_host["pg-bad-result"].result == {"containers": [{"id": 5}]}
    finally:
        await nc.close()


async def test_the_same_reply_without_a_result_model_is_left_untyped(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await serve(nc)
        gathered = await gather_replies(
            Connection(nc), SUBJECTS, "ps", {}, ["pg-good", "pg-bad-result"], timeout=2
        )
        assert gathered.results == {} and gathered.invalid_results == {}
        assert gathered.replies["pg-good"].result == {"containers": [CONTAINER]}
        assert gathered.replies["pg-bad-result"].result == {"containers": [{"id": 5}]}
    finally:
        await nc.close()


async def test_every_targeted_host_is_answered_or_reported_with_invalid_reply(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await serve(nc)
        async with Fleet(NatsOptions(servers=nats_server.url), prefix=PREFIX, timeout=2.0) as fleet:
            assert await fleet.registry() is not None
            for host in ANSWERING:
                await nc.publish(SUBJECTS.heartbeat(host), heartbeat(host))
            await nc.flush()

            async def all_known() -> bool:
                return len(await fleet.agents()) == len(ANSWERING)

            await apoll("every answering host in the registry", all_known, 5.0, interval=0.05)
            result = await fleet.ps(selector=Selector(hosts=tuple(ANSWERING)))
    finally:
        await nc.close()
    assert sorted(result.targeted) == ANSWERING
    assert set(result.replies) == {"pg-good", "pg-empty"}
    assert isinstance(result.replies["pg-good"], PsResult)
    assert result.replies["pg-empty"].containers == []
    assert {h for h, e in result.errors.items() if e.code == ErrorCode.INVALID_REPLY} == INVALID
    with pytest.raises(ValidationError) as bad:  # the message names as many errors as before
        PsResult.model_validate({"containers": [{"id": 5}]})
    expected = f"the host's result is malformed ({bad.value.error_count()} errors)"
    assert result.errors["pg-bad-result"].message == expected
    assert result.errors["pg-failed"] == ErrorInfo(
        code=ErrorCode.DOCKER_UNAVAILABLE, message="engine gone"
    )
    assert result.missing == ["pg-not-ours"]
    for host in ANSWERING:
        placed = [host in result.replies, host in result.errors, host in result.missing]
        assert placed.count(True) == 1, host
    assert result.to_json()["errors"]["pg-garbage"]["code"] == "invalid_reply"

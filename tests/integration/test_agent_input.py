"""The agent against hostile and unusual input, over a real NATS server.

An in-process :class:`agent.Agent` with a :class:`tests.fakes.FakeEngine` (no Docker
needed) is driven with raw nats-py publishes and requests. Every refusal must be a
typed error reply, and afterwards the agent must still answer a valid ping with no
request task left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats
import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from shoal.agent import Agent
from shoal.agent.config import AgentSettings
from shoal.protocol import (
    MAX_REQUEST_BYTES,
    AgentFacts,
    ErrorCode,
    ErrorInfo,
    PsResult,
    Reply,
    Request,
    Selector,
    Subjects,
    Target,
    Verb,
    utcnow,
)
from shoal.protocol.envelope import wire_time
from tests.fakes import FAKE_INFO, FakeEngine, make_container
from tests.stack import NatsServer

pytestmark = pytest.mark.nats

SUBJECTS = Subjects()
TIMEOUT = 2.0
"""Longest wait for a reply that must come."""
QUIET = 0.3
"""How long to listen for a reply that must not come."""
START_LIMIT = 5.0
HEARTBEAT = 0.5

CONTAINERS = [
    make_container("web-1", labels={"app": "web"}),
    make_container("old-job", state="exited"),
]


def new_host_id(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "test"
    return f"in-{cleaned}-{secrets.token_hex(3)}"


@contextlib.asynccontextmanager
async def running_agent(
    server: NatsServer,
    host_id: str,
    engine: FakeEngine | None = None,
    **overrides: Any,
) -> AsyncIterator[Agent]:
    options: dict[str, Any] = {
        "servers": (server.url,),
        "host_id": host_id,
        "heartbeat_interval": HEARTBEAT,
        "docker_timeout": 5.0,
        "shutdown_grace": 2.0,
        "insecure": True,
        "state_dir": server.workdir / "in-process-agents",
        **overrides,
    }
    agent = Agent(AgentSettings(**options), engine=engine or FakeEngine(CONTAINERS))
    try:
        async with asyncio.timeout(START_LIMIT):
            await agent.start()
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
def host_id(request: pytest.FixtureRequest) -> str:
    return new_host_id(request.node.name)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(CONTAINERS)


@pytest.fixture
async def agent(nats_server: NatsServer, host_id: str, engine: FakeEngine) -> AsyncIterator[Agent]:
    async with running_agent(nats_server, host_id, engine) as running:
        yield running


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


# --- helpers ------------------------------------------------------------------------


def make_request(host: str, verb: str = Verb.PING, **fields: Any) -> Request:
    return Request(verb=verb, target=Target(host=host), sender="test", **fields)


def encode(request: Request, **changes: Any) -> bytes:
    """The request as JSON bytes, with top-level fields replaced (None removes one)."""
    doc = json.loads(request.model_dump_json())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


async def ask(nc: NATS, subject: str, payload: Request | bytes) -> Reply:
    data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
    msg = await nc.request(subject, data, timeout=TIMEOUT)
    return Reply.model_validate_json(msg.data)


def refused(reply: Reply, code: ErrorCode) -> ErrorInfo:
    assert not reply.ok, reply
    assert reply.error is not None
    assert reply.error.code == code, reply.error
    assert reply.error.message
    return reply.error


async def settle(agent: Agent) -> None:
    """Wait (bounded) for the agent's request tasks to finish."""
    tasks = set(agent._tasks)
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=TIMEOUT)
        assert not pending, f"{len(pending)} request task(s) still running"


async def assert_serves(nc: NATS, agent: Agent) -> None:
    """The agent answers a valid ping, and holds no request task once idle."""
    request = make_request(agent.host_id)
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PING), request)
    assert reply.ok, reply.error
    assert reply.id == request.id and reply.host == agent.host_id
    assert AgentFacts.model_validate(reply.result).host_id == agent.host_id
    await settle(agent)
    assert not agent._tasks
    assert agent._pending == 0


class Inbox:
    """A reply inbox: publish requests with it, read what comes back with a limit."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.subject = nc.new_inbox()
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Inbox:
        self._sub = await self.nc.subscribe(self.subject)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def publish(self, subject: str, payload: Request | bytes) -> None:
        data = payload if isinstance(payload, bytes) else payload.model_dump_json().encode()
        await self.nc.publish(subject, data, reply=self.subject)
        await self.nc.flush(timeout=TIMEOUT)

    async def next(self, timeout: float) -> Reply | None:
        assert self._sub is not None
        try:
            msg = await self._sub.next_msg(timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        return Reply.model_validate_json(msg.data)

    async def replies_from(self, host: str, window: float) -> list[Reply]:
        """Every reply from ``host`` within ``window`` seconds (others are skipped:
        agents of other tests may answer broadcasts too)."""
        deadline = time.monotonic() + window
        found = []
        while (left := deadline - time.monotonic()) > 0:
            reply = await self.next(left)
            if reply is not None and reply.host == host:
                found.append(reply)
        return found

    async def reply_from(self, host: str) -> Reply:
        """The first reply from ``host``; fails after :data:`TIMEOUT`."""
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            reply = await self.next(left)
            if reply is not None and reply.host == host:
                return reply
        pytest.fail(f"no reply from {host} within {TIMEOUT}s")


# --- malformed input ------------------------------------------------------------------

DEEP = 100_000

MALFORMED = {
    "garbage-bytes": b"\x00\xff\xfe garbage \x80",
    "empty": b"",
    "not-json": b"hello agent, please list containers",
    "json-array": b'[{"v": 1, "verb": "ping"}]',
    "json-string": b'"ping"',
    "json-null": b"null",
    "deep-array": b"[" * DEEP + b"]" * DEEP,
    "deep-object": b'{"a":' * (DEEP // 4) + b"1" + b"}" * (DEEP // 4),
    "deep-args": b'{"v":1,"verb":"ping","args":' + b"[" * DEEP + b"]" * DEEP + b"}",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_payload_is_bad_request(nc: NATS, agent: Agent, payload: bytes) -> None:
    assert len(payload) <= MAX_REQUEST_BYTES
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PING), payload)
    refused(reply, ErrorCode.BAD_REQUEST)
    assert reply.id == "unknown"
    assert reply.host == agent.host_id
    await assert_serves(nc, agent)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"color": "red"}, "color"),
        ({"target": {"host": "PLACEHOLDER", "port": 22}}, "port"),
        ({"issued_at": None}, "issued_at"),
        ({"id": None}, "id"),
        ({"ttl": -5}, "ttl"),
        ({"issued_at": "2024-05-01T12:00:00"}, "issued_at"),  # no time zone
        ({"target": {"host": "PLACEHOLDER", "selector": {}}}, "target"),
    ],
    ids=[
        "unknown-field",
        "unknown-target-field",
        "no-issued-at",
        "no-id",
        "negative-ttl",
        "naive-time",
        "host-and-selector",
    ],
)
async def test_invalid_envelope_is_bad_request(
    nc: NATS, agent: Agent, changes: dict[str, Any], named: str
) -> None:
    request = make_request(agent.host_id)
    raw = json.loads(json.dumps(changes).replace("PLACEHOLDER", agent.host_id))
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PING), encode(request, **raw))
    error = refused(reply, ErrorCode.BAD_REQUEST)
    assert named in error.message
    if "id" in changes:
        assert reply.id == "unknown"
    else:
        assert reply.id == request.id  # the id is echoed whenever it can be read
    await assert_serves(nc, agent)


async def test_newer_protocol_version_is_unsupported(nc: NATS, agent: Agent) -> None:
    request = make_request(agent.host_id)
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PING), encode(request, v=99))
    error = refused(reply, ErrorCode.UNSUPPORTED_VERSION)
    assert reply.id == request.id
    assert error.detail["supported"] == [1]
    await assert_serves(nc, agent)


async def test_oversized_request_is_payload_too_large(nc: NATS, agent: Agent) -> None:
    subject = SUBJECTS.host(agent.host_id, Verb.PING)
    request = make_request(agent.host_id)
    data = request.model_dump_json().encode()
    oversized = data + b" " * (MAX_REQUEST_BYTES + 1 - len(data))
    assert MAX_REQUEST_BYTES < len(oversized) < nc.max_payload
    error = refused(await ask(nc, subject, oversized), ErrorCode.PAYLOAD_TOO_LARGE)
    assert error.detail == {"size": MAX_REQUEST_BYTES + 1, "limit": MAX_REQUEST_BYTES}

    at_limit = make_request(agent.host_id)
    data = at_limit.model_dump_json().encode()
    reply = await ask(nc, subject, data + b" " * (MAX_REQUEST_BYTES - len(data)))
    assert reply.ok, reply.error  # exactly the limit is still accepted
    await assert_serves(nc, agent)


# --- verbs and arguments ------------------------------------------------------------------


async def test_unknown_verb_on_own_subject(nc: NATS, agent: Agent) -> None:
    request = make_request(agent.host_id, verb="frobnicate")
    reply = await ask(nc, SUBJECTS.host(agent.host_id, "frobnicate"), request)
    error = refused(reply, ErrorCode.UNKNOWN_VERB)
    assert reply.id == request.id
    assert "frobnicate" in error.message
    assert {"ping", "ps"} <= set(error.detail["known"])
    await assert_serves(nc, agent)


async def test_unknown_verb_by_broadcast(nc: NATS, agent: Agent) -> None:
    selector = Selector.build(hosts=[agent.host_id])
    request = Request(verb="frobnicate", target=Target(selector=selector), sender="test")
    async with Inbox(nc) as inbox:
        await inbox.publish(SUBJECTS.broadcast("frobnicate"), request)
        reply = await inbox.reply_from(agent.host_id)
    refused(reply, ErrorCode.UNKNOWN_VERB)
    assert reply.id == request.id
    await assert_serves(nc, agent)


@pytest.mark.parametrize(
    ("subject_verb", "request_verb"),
    [("ps", "ping"), ("ping", "ps"), ("frobnicate", "ping"), ("ping", "frobnicate")],
)
async def test_verb_of_subject_and_request_must_agree(
    nc: NATS, agent: Agent, engine: FakeEngine, subject_verb: str, request_verb: str
) -> None:
    request = make_request(agent.host_id, verb=request_verb)
    reply = await ask(nc, SUBJECTS.host(agent.host_id, subject_verb), request)
    error = refused(reply, ErrorCode.BAD_REQUEST)
    assert subject_verb in error.message and request_verb in error.message
    assert "list_containers" not in engine.calls
    await assert_serves(nc, agent)


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("ps", {"all": "maybe"}),
        ("ps", {"status": ["sleeping"]}),
        ("ps", {"bogus": 1}),
        ("ps", {"name": [""]}),
        ("ps", {"label": ["x"] * 33}),
        ("ps", {"name": ["a\nb"]}),
        ("ping", {"verbose": True}),
    ],
    ids=[
        "not-bool",
        "bad-status",
        "unknown-arg",
        "empty-filter",
        "too-many",
        "control-char",
        "ping",
    ],
)
async def test_bad_arguments_are_bad_request(
    nc: NATS, agent: Agent, engine: FakeEngine, verb: str, args: dict[str, Any]
) -> None:
    request = make_request(agent.host_id, verb=verb, args=args)
    reply = await ask(nc, SUBJECTS.host(agent.host_id, verb), request)
    error = refused(reply, ErrorCode.BAD_REQUEST)
    assert reply.id == request.id
    assert f"invalid arguments for {verb}" in error.message
    # Machine-readable, as an invalid envelope's: pydantic's error list, JSON-safe.
    errors = error.detail["errors"]
    assert errors and all({"type", "loc", "msg"} <= set(e) for e in errors)
    assert "list_containers" not in engine.calls
    await assert_serves(nc, agent)


async def test_request_for_another_host_is_refused(
    nc: NATS, agent: Agent, engine: FakeEngine
) -> None:
    other = new_host_id("someone-else")
    request = make_request(other, verb=Verb.PS)
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PS), request)
    error = refused(reply, ErrorCode.BAD_REQUEST)
    assert other in error.message and agent.host_id in error.message
    assert reply.host == agent.host_id
    assert "list_containers" not in engine.calls
    await assert_serves(nc, agent)


# --- time window and replays -------------------------------------------------------------


async def test_expired_request_is_refused(nc: NATS, agent: Agent, engine: FakeEngine) -> None:
    request = make_request(
        agent.host_id, verb=Verb.PS, issued_at=utcnow() - timedelta(hours=1), ttl=1
    )
    reply = await ask(nc, SUBJECTS.host(agent.host_id, Verb.PS), request)
    error = refused(reply, ErrorCode.EXPIRED)
    assert reply.id == request.id
    # The one RFC 3339 form of the wire, as replies write their own times.
    assert error.detail["expires_at"] == wire_time(request.expires_at)
    assert error.detail["expires_at"].endswith("Z")
    assert error.detail["agent_time"].endswith("Z")
    assert "list_containers" not in engine.calls
    await assert_serves(nc, agent)


async def test_request_from_the_future_is_refused(nc: NATS, agent: Agent) -> None:
    subject = SUBJECTS.host(agent.host_id, Verb.PING)
    future = make_request(agent.host_id, issued_at=utcnow() + timedelta(hours=1))
    error = refused(await ask(nc, subject, future), ErrorCode.EXPIRED)
    assert "future" in error.message

    slightly_ahead = make_request(agent.host_id, issued_at=utcnow() + timedelta(seconds=30))
    reply = await ask(nc, subject, slightly_ahead)
    assert reply.ok, reply.error  # within the allowed clock skew
    await assert_serves(nc, agent)


async def test_same_request_id_runs_once(nc: NATS, agent: Agent, engine: FakeEngine) -> None:
    subject = SUBJECTS.host(agent.host_id, Verb.PS)
    request = make_request(agent.host_id, verb=Verb.PS)
    first = await ask(nc, subject, request)
    assert first.ok, first.error
    second = await ask(nc, subject, request)
    refused(second, ErrorCode.REPLAYED)
    assert second.id == request.id
    assert engine.calls.count("list_containers") == 1
    await assert_serves(nc, agent)


async def test_request_without_reply_subject(nc: NATS, agent: Agent, engine: FakeEngine) -> None:
    subject = SUBJECTS.host(agent.host_id, Verb.PS)
    request = make_request(agent.host_id, verb=Verb.PS)
    await nc.publish(subject, b"\x00 no reply wanted")
    await nc.publish(subject, request.model_dump_json().encode())
    # Served in order on one subscription: the same id with a reply subject now
    # proves the first copy was taken in (and run) although nobody could be told.
    reply = await ask(nc, subject, request)
    refused(reply, ErrorCode.REPLAYED)
    await settle(agent)
    assert engine.calls.count("list_containers") == 1
    await assert_serves(nc, agent)


# --- broadcast ------------------------------------------------------------------------------


async def test_broadcast_with_matching_selector_is_answered(
    nats_server: NatsServer, nc: NATS, host_id: str
) -> None:
    suite = secrets.token_hex(4)
    async with running_agent(nats_server, host_id, labels={"suite": suite}) as agent:
        selector = Selector.build(labels=[f"suite={suite}", "os=linux,arch=amd64"])
        request = Request(verb=Verb.PING, target=Target(selector=selector), sender="test")
        async with Inbox(nc) as inbox:
            await inbox.publish(SUBJECTS.broadcast(Verb.PING), request)
            reply = await inbox.reply_from(host_id)
        assert reply.ok, reply.error
        assert reply.id == request.id
        facts = AgentFacts.model_validate(reply.result)
        assert facts.labels == {"suite": suite}
        assert (facts.os, facts.arch, facts.kernel) == ("linux", "amd64", FAKE_INFO.kernel)
        await assert_serves(nc, agent)


async def test_broadcast_with_other_selector_is_not_answered(
    nats_server: NatsServer, nc: NATS, host_id: str
) -> None:
    suite = secrets.token_hex(4)
    async with running_agent(nats_server, host_id, labels={"suite": suite}) as agent:
        subject = SUBJECTS.broadcast(Verb.PING)
        misses = [
            Selector.build(hosts=[host_id], labels=[f"suite={suite}-other"]),
            Selector.build(hosts=[host_id], labels=["arch=arm64"]),
            Selector.build(hosts=["in-nobody-*"], labels=[f"suite={suite}"]),
            Selector.build(hosts=[host_id], labels=["!suite"]),
        ]
        hit = Request(
            verb=Verb.PING,
            target=Target(selector=Selector.build(hosts=[host_id])),
            sender="test",
        )
        async with Inbox(nc) as inbox:
            for selector in misses:
                miss = Request(verb=Verb.PING, target=Target(selector=selector), sender="test")
                await inbox.publish(subject, miss)
            # The broadcasts are served in order: once the last one is answered, the
            # earlier ones were seen, and skipped.
            await inbox.publish(subject, hit)
            answered = await inbox.reply_from(host_id)
            assert answered.id == hit.id, answered
            assert await inbox.replies_from(host_id, QUIET) == []
        await assert_serves(nc, agent)


async def test_broadcast_without_selector_is_bad_request(nc: NATS, agent: Agent) -> None:
    request = make_request(agent.host_id)  # names a host: not a broadcast request
    async with Inbox(nc) as inbox:
        await inbox.publish(SUBJECTS.broadcast(Verb.PING), request)
        reply = await inbox.reply_from(agent.host_id)
    error = refused(reply, ErrorCode.BAD_REQUEST)
    assert "selector" in error.message
    assert reply.id == request.id
    await assert_serves(nc, agent)


# --- the engine -------------------------------------------------------------------------------


async def test_unreachable_engine(nats_server: NatsServer, nc: NATS, host_id: str) -> None:
    engine = FakeEngine(CONTAINERS, reachable=False)
    async with running_agent(nats_server, host_id, engine) as agent:
        ps = await ask(nc, SUBJECTS.host(host_id, Verb.PS), make_request(host_id, verb=Verb.PS))
        refused(ps, ErrorCode.DOCKER_UNAVAILABLE)

        ping = await ask(nc, SUBJECTS.host(host_id, Verb.PING), make_request(host_id))
        assert ping.ok, ping.error
        docker = AgentFacts.model_validate(ping.result).docker
        assert docker.reachable is False
        assert docker.error and "cannot connect" in docker.error

        engine.reachable = True  # the engine comes back
        ping = await ask(nc, SUBJECTS.host(host_id, Verb.PING), make_request(host_id))
        docker = AgentFacts.model_validate(ping.result).docker
        assert (docker.reachable, docker.version) == (True, FAKE_INFO.version)
        ps = await ask(nc, SUBJECTS.host(host_id, Verb.PS), make_request(host_id, verb=Verb.PS))
        assert ps.ok, ps.error
        names = [c.name for c in PsResult.model_validate(ps.result).containers]
        assert names == ["web-1"]
        await assert_serves(nc, agent)


async def test_concurrency_and_queue_limit(nats_server: NatsServer, nc: NATS, host_id: str) -> None:
    engine = FakeEngine(CONTAINERS)
    engine.hold()
    try:
        async with running_agent(
            nats_server, host_id, engine, concurrency=2, queue_limit=1
        ) as agent:
            subject = SUBJECTS.host(host_id, Verb.PS)
            requests = [make_request(host_id, verb=Verb.PS, args={"all": True}) for _ in range(5)]
            async with Inbox(nc) as inbox:
                started = time.monotonic()
                for request in requests:
                    await inbox.publish(subject, request)
                busy = [await inbox.reply_from(host_id) for _ in range(2)]
                assert time.monotonic() - started < 1.0, "busy replies were not prompt"
                assert sorted(r.id for r in busy) == sorted(r.id for r in requests[3:])
                for reply in busy:
                    refused(reply, ErrorCode.BUSY)

                # Two run inside the engine, one waits for a slot, nothing else answers.
                assert await asyncio.to_thread(engine.wait_active, 2, TIMEOUT)
                assert await inbox.replies_from(host_id, QUIET) == []
                assert engine.active == 2
                assert agent._pending == 3

                engine.release()
                done = [await inbox.reply_from(host_id) for _ in range(3)]
            assert sorted(r.id for r in done) == sorted(r.id for r in requests[:3])
            for reply in done:
                assert reply.ok, reply.error
                containers = PsResult.model_validate(reply.result).containers
                assert [c.name for c in containers] == ["web-1", "old-job"]
            assert engine.calls.count("list_containers") == 3
            await assert_serves(nc, agent)
    finally:
        engine.release()


# --- lifecycle -------------------------------------------------------------------------------


async def test_stop_twice_and_say_leaving(nats_server: NatsServer, nc: NATS, host_id: str) -> None:
    heartbeats = await nc.subscribe(SUBJECTS.heartbeat(host_id))
    stopping = await nc.subscribe(SUBJECTS.event(host_id, "stopping"))
    await nc.flush(timeout=TIMEOUT)
    engine = FakeEngine()
    agent = Agent(
        AgentSettings(
            servers=(nats_server.url,),
            host_id=host_id,
            heartbeat_interval=HEARTBEAT,
            insecure=True,
            state_dir=nats_server.workdir / "in-process-agents",
        ),
        engine=engine,
    )
    try:
        async with asyncio.timeout(START_LIMIT):
            await agent.start()
        first = AgentFacts.model_validate_json((await heartbeats.next_msg(TIMEOUT)).data)
        assert (first.host_id, first.status) == (host_id, "online")
        await assert_serves(nc, agent)
    finally:
        await agent.stop()
    await agent.stop()  # a second stop is a no-op

    deadline = time.monotonic() + TIMEOUT
    statuses = []
    while "leaving" not in statuses and (left := deadline - time.monotonic()) > 0:
        facts = AgentFacts.model_validate_json((await heartbeats.next_msg(left)).data)
        assert facts.instance == agent.instance
        statuses.append(facts.status)
    assert statuses[-1] == "leaving", statuses
    assert json.loads((await stopping.next_msg(TIMEOUT)).data)["host_id"] == host_id
    assert engine.closed

    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(
            SUBJECTS.host(host_id, Verb.PING),
            make_request(host_id).model_dump_json().encode(),
            timeout=TIMEOUT,
        )


# --- arbitrary bytes ---------------------------------------------------------------------------

FUZZ_HOST = new_host_id("fuzz")
_VALID = make_request(FUZZ_HOST).model_dump_json().encode()

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
PAYLOADS = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=200).map(str.encode),
    _JSON.map(lambda value: json.dumps(value).encode()),
    st.integers(0, len(_VALID) - 1).map(lambda n: _VALID[:n]),  # a request cut short
)


@pytest.fixture(scope="module")
async def fuzz_client(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def fuzz_agent(nats_server: NatsServer) -> AsyncIterator[Agent]:
    async with running_agent(nats_server, FUZZ_HOST) as running:
        yield running


@settings(max_examples=60, deadline=None, database=None)
@given(payload=PAYLOADS)
async def test_arbitrary_bytes_get_a_typed_refusal(
    fuzz_client: NATS, fuzz_agent: Agent, payload: bytes
) -> None:
    for verb in (Verb.PING, "nope"):
        reply = await ask(fuzz_client, SUBJECTS.host(FUZZ_HOST, verb), payload)
        assert not reply.ok
        assert reply.host == FUZZ_HOST
        assert reply.error is not None
        assert reply.error.code in set(ErrorCode)
    await assert_serves(fuzz_client, fuzz_agent)

"""Reading the registry (controller/registry.py over controller/transport/jetstream.py):
batched direct gets, page by page, and the ordered-consumer fallback for a stream without
direct gets; both give the same records."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

import shoal.controller.registry as registry_module
import shoal.controller.transport.jetstream as jetstream_module
from shoal.controller.registry import Registry, registry_stream_name
from shoal.controller.transport import Connection, JetStream
from shoal.protocol import Subjects, utcnow
from tests.factories import heartbeat
from tests.poll import apoll
from tests.stack import NatsServer

pytestmark = pytest.mark.nats


@asynccontextmanager
async def client(server: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(server.url)
    try:
        yield nc
    finally:
        await nc.close()


async def fill(nc: NATS, subjects: Subjects, count: int) -> list[str]:
    """``count`` hosts, a few of them heartbeating twice, plus heartbeats to ignore."""
    hosts = [f"reg-{i:03d}" for i in range(count)]
    for host in hosts:
        await nc.publish(subjects.heartbeat(host), heartbeat(host))
    for host in hosts[::5]:  # a later heartbeat replaces the first one
        await nc.publish(subjects.heartbeat(host), heartbeat(host, labels={"again": "yes"}))
    await nc.publish(subjects.heartbeat("reg-liar"), heartbeat("reg-000"))  # claims another host
    await nc.publish(subjects.heartbeat("reg-junk"), b"{not json")
    await nc.publish(subjects.heartbeat(hosts[1]), heartbeat(hosts[1], status="leaving"))
    await nc.flush()
    return hosts


async def settled(registry: Registry, expected: int) -> None:
    async def arrived() -> bool:
        info = await registry.js.raw.stream_info(registry.stream)
        return info.state.messages >= expected

    await apoll("the heartbeats to reach the stream", arrived, 5.0, interval=0.05)


def check(records: list[registry_module.AgentRecord], hosts: list[str]) -> None:
    assert [r.host_id for r in records] == hosts  # sorted, liar and junk ignored
    by_host = {r.host_id: r for r in records}
    assert all(by_host[h].facts.labels == {"again": "yes"} for h in hosts[::5])
    assert not by_host[hosts[1]].online and by_host[hosts[1]].facts.status == "leaving"
    assert sum(r.online for r in records) == len(hosts) - 1
    now = utcnow()
    for record in records:  # the server's time stamp, not the agent's clock
        assert now - timedelta(seconds=30) < record.last_seen <= now + timedelta(seconds=1)


async def test_a_batched_direct_get_reads_every_host_page_by_page(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream_module, "DIRECT_BATCH", 7)  # 61 hosts: 9 pages
    subjects = Subjects("regdirect")
    async with client(nats_server) as nc:
        registry = Registry(JetStream(Connection(nc), timeout=5), subjects)
        await registry.ensure()
        info = await registry.js.raw.stream_info(registry.stream)
        assert info.config.allow_direct
        hosts = await fill(nc, subjects, 61)
        await settled(registry, 63)
        consumer_reads = 0
        original = JetStream._read_consumer

        async def counted(self: JetStream, name: str, subjects: str) -> object:
            nonlocal consumer_reads
            consumer_reads += 1
            return await original(self, name, subjects)

        monkeypatch.setattr(JetStream, "_read_consumer", counted)
        check(await registry.read(), hosts)
        assert consumer_reads == 0
        monkeypatch.setattr(jetstream_module, "DIRECT_BATCH", 5000)
        check(await registry.read(), hosts)


async def test_an_empty_registry_reads_as_no_hosts(nats_server: NatsServer) -> None:
    async with client(nats_server) as nc:
        registry = Registry(JetStream(Connection(nc), timeout=5), Subjects("regempty"))
        await registry.ensure()
        assert await registry.read() == []
        await nc.publish(Subjects("regempty").heartbeat("reg-gone"), heartbeat("reg-gone"))
        await nc.flush()
        await settled(registry, 1)
        assert await registry.forget("reg-gone")
        assert await registry.read() == []


async def test_a_stream_without_direct_gets_is_read_through_a_consumer(
    nats_server: NatsServer,
) -> None:
    subjects = Subjects("regconsumer")
    async with client(nats_server) as nc:
        js = JetStream(Connection(nc), timeout=5)
        await js.raw.add_stream(  # as a registry made without direct gets would be
            StreamConfig(
                name=registry_stream_name(subjects),
                subjects=[subjects.heartbeat_all()],
                max_msgs_per_subject=1,
                discard=DiscardPolicy.OLD,
                storage=StorageType.FILE,
                allow_direct=False,
            )
        )
        registry = Registry(js, subjects)
        assert not await registry.ensure()
        hosts = await fill(nc, subjects, 23)
        await settled(registry, 25)
        check(await registry.read(), hosts)


async def test_a_server_without_batched_direct_gets_is_read_through_a_consumer(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    subjects = Subjects("regolder")
    async with client(nats_server) as nc:
        registry = Registry(JetStream(Connection(nc), timeout=5), subjects)
        assert registry.js._batches_direct_gets()  # the nats-server of the tests is 2.11+
        monkeypatch.setattr(JetStream, "_batches_direct_gets", lambda self: False)

        async def no_direct_gets(self: JetStream, name: str, subjects: str) -> None:
            raise AssertionError("a direct get on a server that does not batch them")

        monkeypatch.setattr(JetStream, "_read_direct", no_direct_gets)
        await registry.ensure()
        hosts = await fill(nc, subjects, 12)
        await settled(registry, 14)
        check(await registry.read(), hosts)

"""Key-value buckets (controller/transport/jetstream.py): listing reads the bucket's
stream directly, leaves no consumer behind and skips deleted and purged keys."""

from __future__ import annotations

import nats
import pytest

from shoal.controller.transport import BucketSpec, Connection, JetStream
from tests.stack import NatsServer

pytestmark = pytest.mark.nats


async def test_entries_give_each_live_key_its_latest_value_and_leave_no_consumer(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = JetStream(Connection(nc), timeout=5)
        bucket = await js.bucket(
            BucketSpec("SHOAL_TEST_ENTRIES", "entries test", 0, history=5), action="test"
        )
        assert await bucket.entries() == {}
        await bucket.put("web.host-a", b"1")
        await bucket.put("web.host-a", b"2")  # a later value replaces the first
        await bucket.put("db.host-b", b"db")
        revision = await bucket.put("gone", b"x")
        await bucket.delete("gone", last=revision)
        await bucket.put("purged", b"y")
        await bucket.purge("purged")
        for _ in range(50):  # nats-py's keys() left a consumer per call (limit 1,000)
            assert await bucket.entries() == {"web.host-a": b"2", "db.host-b": b"db"}
        info = await js.raw.stream_info("KV_SHOAL_TEST_ENTRIES")
        assert info.state.consumer_count == 0
    finally:
        await nc.close()


async def test_a_bucket_made_without_direct_gets_is_given_them(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = JetStream(Connection(nc), timeout=5)
        old = await js.raw.create_key_value(bucket="SHOAL_TEST_OLD", history=1)  # no direct
        await old.put("web.host-a", b"v")
        bucket = await js.bucket(BucketSpec("SHOAL_TEST_OLD", "old", 0), action="test")
        info = await js.raw.stream_info("KV_SHOAL_TEST_OLD")
        assert info.config.allow_direct
        assert await bucket.entries() == {"web.host-a": b"v"}
        assert (await js.raw.stream_info("KV_SHOAL_TEST_OLD")).state.consumer_count == 0
    finally:
        await nc.close()

"""Replies larger than the server's max payload are chunked and reassembled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.agent import Agent, AgentSettings
from shoal.controller import Fleet
from shoal.protocol import NatsOptions, PsArgs
from tests.fakes import FakeEngine, make_container
from tests.stack import NatsServer, free_port

pytestmark = pytest.mark.nats


@pytest.fixture
async def small_server(stack_dir: Path) -> AsyncIterator[NatsServer]:
    """A server whose max payload is 64 KiB, so a few hundred containers overflow it."""
    with NatsServer(stack_dir / f"small-{free_port()}", config="max_payload: 65536\n") as server:
        yield server


async def test_a_host_with_thousands_of_containers_answers_in_full(
    small_server: NatsServer,
) -> None:
    containers = [make_container(f"job-{i:05d}", labels={"n": str(i)}) for i in range(3000)]
    settings = AgentSettings(
        servers=(small_server.url,),
        host_id="big-host",
        insecure=True,
        state_dir=small_server.workdir / "agent",
        heartbeat_interval=5,
    )
    agent = Agent(settings, engine=FakeEngine(containers))
    await agent.start()
    try:
        async with Fleet(NatsOptions(servers=small_server.url), timeout=10) as fleet:
            result = await fleet.ps(PsArgs(all=True))
        assert result.ok, (result.errors, result.missing)
        listed = result.replies["big-host"].containers
        assert [c.name for c in listed] == [c.name for c in containers]
        assert listed[-1].labels == {"n": "2999"}
    finally:
        await agent.stop()

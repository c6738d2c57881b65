"""Slow is not dead: the controller tells a busy host from a silent one."""

from __future__ import annotations

import pytest

from shoal.agent import Agent, AgentSettings
from shoal.controller import Fleet
from shoal.protocol import NatsOptions, PsArgs, Selector
from tests.fakes import FakeEngine, make_container
from tests.stack import NatsServer

pytestmark = pytest.mark.nats
ONLY = Selector(hosts=("slow-host",))


async def test_a_host_still_working_is_reported_as_running_not_silent(
    nats_server: NatsServer,
) -> None:
    engine = FakeEngine([make_container("web-1")])
    agent = Agent(
        AgentSettings(
            servers=(nats_server.url,),
            host_id="slow-host",
            insecure=True,
            state_dir=nats_server.workdir / "slow",
            docker_timeout=30,
        ),
        engine=engine,
    )
    await agent.start()
    try:
        async with Fleet(NatsOptions(servers=nats_server.url), timeout=1.0) as fleet:
            engine.hold()  # ps blocks inside the engine, sending no progress
            result = await fleet.ps(PsArgs(), selector=ONLY)
            assert result.missing == ["slow-host"]
            assert result.running == ["slow-host"]
            assert result.exit_code == 4
            engine.release()

            # A read-only verb is retried with new ids; held through both attempts.
            engine.hold()
            retried = await fleet.ps(PsArgs(), selector=ONLY, retries=1)
            assert retried.missing == ["slow-host"] and retried.running == ["slow-host"]
            assert engine.calls.count("list_containers") >= 3  # 1 + 1 + the retry
            engine.release()
            again = await fleet.ps(PsArgs(), selector=ONLY, retries=2, timeout=15)
            assert again.ok, (again.errors, again.missing, again.running)
            assert [c.name for c in again.replies["slow-host"].containers] == ["web-1"]
    finally:
        engine.release()
        await agent.stop()

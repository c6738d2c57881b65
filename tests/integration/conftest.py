"""Agents for the three simulated hosts, one ``shoal-agent`` process each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import Fleet
from protocol import NatsOptions
from tests.integration.agents import AgentProcess
from tests.stack import DockerEngine, NatsServer

KEEP_ENV = {
    "SHOAL_PRUNE_KEEP_IMAGES": "shoal-test/busybox:*,*/keep-*",
    "SHOAL_PRUNE_KEEP_CONTAINERS": "keep-*",
}
"""Session agents protect the base image, so a test's prune can never take it."""

LABELS = {
    "host-a": {"role": "web", "zone": "eu"},
    "host-b": {"role": "web", "zone": "us", "canary": "true"},
    "host-c": {"role": "db", "zone": "eu"},
}


@pytest.fixture(scope="session")
def agents(
    nats_server: NatsServer, engines: list[DockerEngine], stack_dir: Path
) -> Iterator[dict[str, AgentProcess]]:
    """One running agent per engine, keyed by host id; stopped by pid at the end."""
    asyncio.run(_init_registry(nats_server.url))
    started: dict[str, AgentProcess] = {}
    try:
        for engine in engines:
            agent = AgentProcess(
                stack_dir / "agents",
                server=nats_server.url,
                host_id=engine.name,
                docker_host=engine.host,
                labels=LABELS[engine.name],
                env=KEEP_ENV,
            )
            agent.start(wait=False)
            started[engine.name] = agent
        for agent in started.values():
            agent.wait_ready()
        yield started
    finally:
        for agent in started.values():
            agent.stop()


async def _init_registry(url: str) -> None:
    async with Fleet(NatsOptions(servers=url)) as fleet:
        await fleet.init_registry()

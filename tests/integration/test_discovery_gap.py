"""Agents started before the registry exists are all targeted once it does.

A fresh NATS server without the registry stream; two agents whose heartbeats are a
minute apart start first (their first heartbeat is lost: nothing captures it), then
``shoal init`` creates the registry, a third agent starts (its heartbeat is captured),
and ``shoal prune --yes`` runs at once: every live host is targeted, not only the one
the registry has heard of.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.agents import AgentProcess, run_shoal
from tests.integration.conftest import KEEP_ENV, Keys
from tests.stack import DockerEngine, NatsServer, nats_available

pytestmark = pytest.mark.engine


@pytest.fixture
def fresh_nats(stack_dir: Path, tmp_path: Path) -> Iterator[NatsServer]:
    require(nats_available())
    with NatsServer(tmp_path / "nats", jetstream=True) as server:
        yield server


def test_agents_started_before_the_registry_are_all_pruned(
    fresh_nats: NatsServer, engines: list[DockerEngine], tmp_path: Path, keys: Keys
) -> None:
    agents = [
        AgentProcess(
            tmp_path / "agents",
            server=fresh_nats.url,
            host_id=f"early-{index}",
            docker_host=engine.host,
            extra=["--heartbeat-interval", "60"],
            env=KEEP_ENV,
            trust=keys.trust,
        )
        for index, engine in enumerate(engines)
    ]
    try:
        for agent in agents[:2]:
            agent.start()
        created = run_shoal("init", server=fresh_nats.url)
        assert created.code == 0, created.stderr
        agents[2].start()
        pruned = run_shoal("prune", "containers", "--yes", "--json", server=fresh_nats.url)
        assert pruned.code == 0, pruned.stderr
        assert sorted(pruned.json()["targeted"]) == ["early-0", "early-1", "early-2"]
        assert pruned.json()["missing"] == []
    finally:
        for agent in agents:
            agent.stop()

"""An agent killed in the middle of a deploy converges on restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.controller import Fleet
from shoal.protocol import (
    DeployArgs,
    NatsOptions,
    Progress,
    Selector,
    ServicesArgs,
    ServiceSpec,
    Verb,
)
from tests.integration.agents import AgentProcess, run_shoal
from tests.integration.conftest import Keys
from tests.stack import TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine


@pytest.fixture
def crash_agent(
    nats_server: NatsServer,
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> Iterator[AgentProcess]:
    agent = AgentProcess(
        stack_dir / f"crash-{test_label}",
        server=nats_server.url,
        host_id=f"crash-{test_label}"[:64],
        docker_host=engines[2].host,
        trust=keys.trust,
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        run_shoal("agents", "forget", agent.host_id, server=nats_server.url)
        with contextlib.closing(engines[2].client()) as client:
            for c in list_containers(client, {"label": f"{TEST_LABEL}={test_label}"}):
                c.remove(force=True)


def service_containers(engine: DockerEngine, name: str) -> list[Any]:
    with contextlib.closing(engine.client()) as client:
        return list_containers(client, {"label": f"shoal.service={name}"})


async def test_killed_mid_deploy_comes_back_on_the_previous_revision(
    nats_server: NatsServer,
    crash_agent: AgentProcess,
    engines: list[DockerEngine],
    app_images: dict[str, str],
    keys: Keys,
    test_label: str,
) -> None:
    host, name = crash_agent.host_id, f"crash-{test_label}"[:60].strip("-")
    target = Selector(hosts=(host,))

    def spec(version: str) -> ServiceSpec:
        return ServiceSpec(
            name=name,
            image=app_images[version],
            network_mode="none",
            labels={TEST_LABEL: test_label},
        )

    async with Fleet(
        NatsOptions(servers=nats_server.url), signer=keys.admin.signer, timeout=30
    ) as fleet:
        first = await fleet.request(
            Verb.DEPLOY, DeployArgs(service=spec("v1"), monitor=0.5), selector=target
        )
        assert first.ok, first.errors

        in_health = asyncio.Event()

        def watch(progress: Progress) -> None:
            if progress.phase == "health":
                in_health.set()

        # v2 without its own healthcheck override waits out a long monitor window...
        slow = DeployArgs(
            service=spec("v2").model_copy(update={"healthcheck": None}),
            monitor=60,
            health_timeout=60,
        )
        deploying = asyncio.create_task(
            fleet.request(Verb.DEPLOY, slow, selector=target, on_progress=watch, timeout=5)
        )
        await asyncio.wait_for(in_health.wait(), 30)
        crash_agent.kill()  # ...and dies in it: the old container is stopped, the new one runs
        result = await deploying
        assert result.missing == [host]
        assert len(service_containers(engines[2], name)) == 2

        await asyncio.to_thread(crash_agent.start)
        status = await fleet.request(Verb.SERVICES, ServicesArgs(service=name), selector=target)
        (svc,) = status.replies[host].services
        assert (svc.revision, svc.state) == (1, "running"), crash_agent.log()
        (only,) = service_containers(engines[2], name)
        assert only.labels["shoal.revision"] == "1" and only.status == "running"

        again = await fleet.request(
            Verb.DEPLOY, DeployArgs(service=spec("v2"), monitor=0.5), selector=target
        )
        assert again.ok, again.errors
        assert (again.replies[host].action, again.replies[host].revision) == ("updated", 2)

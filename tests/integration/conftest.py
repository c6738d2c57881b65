"""Agents for the three simulated hosts, one ``shoal-agent`` process each."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.controller import Fleet
from shoal.protocol import NatsOptions, Role
from tests.integration.agents import AgentProcess, SessionKey, make_key, write_trust
from tests.integration.wheels import build_wheelhouse
from tests.stack import BUSYBOX_IMAGE, DockerEngine, NatsServer, Registry

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


@dataclass(frozen=True)
class Keys:
    admin: SessionKey
    operator: SessionKey
    viewer: SessionKey
    stranger: SessionKey
    """Not in any trust file."""
    trust: Path


@pytest.fixture(scope="session", autouse=True)
def keys(stack_dir: Path) -> Iterator[Keys]:
    """Signing keys and the session's trust file.

    The CLI signs with the admin key (SHOAL_KEY), and its config and state
    directories point into the session's temp dir, never the real home.
    """
    directory = stack_dir / "keys"
    made = Keys(
        admin=make_key(directory, "admin"),
        operator=make_key(directory, "operator"),
        viewer=make_key(directory, "viewer"),
        stranger=make_key(directory, "stranger"),
        trust=stack_dir / "trust.toml",
    )
    write_trust(
        made.trust,
        [(made.admin, Role.ADMIN), (made.operator, Role.OPERATOR), (made.viewer, Role.VIEWER)],
    )
    env = {
        "SHOAL_KEY": str(made.admin.path),
        "XDG_CONFIG_HOME": str(stack_dir / "config"),
        "XDG_STATE_HOME": str(stack_dir / "state"),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield made
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def agents(
    nats_server: NatsServer, engines: list[DockerEngine], stack_dir: Path, keys: Keys
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
                trust=keys.trust,
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


APP_VERSIONS = {
    # version: healthcheck command (v3's always fails)
    "v1": "true",
    "v2": "true",
    "v3": "false",
}


@pytest.fixture(scope="session")
def app_images(engines: list[DockerEngine], registry: Registry) -> dict[str, str]:
    """``app:v1``, ``app:v2`` (healthy) and ``app:v3`` (unhealthy) in the local registry.

    Built from the busybox base on host-a and pushed; agents pull them from there.
    """
    refs = {}
    with contextlib.closing(engines[0].client(timeout=120)) as client:
        for version, check in APP_VERSIONS.items():
            ref = registry.ref("shoal-test/app", version)
            dockerfile = (
                f"FROM {BUSYBOX_IMAGE}\n"
                f"ENV APP_VERSION={version}\n"
                f'LABEL org.example.version="{version}"\n'
                "STOPSIGNAL SIGKILL\n"
                f"HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD {check}\n"
                'CMD ["sleep", "3600"]\n'
            )
            client.images.build(
                fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True, network_mode="none"
            )
            for line in client.api.push(ref, stream=True, decode=True):
                if "error" in line:
                    raise RuntimeError(f"push {ref}: {line['error']}")
            client.images.remove(ref)  # agents must pull it, even on host-a
            refs[version] = ref
    return refs


SESSION_HOSTS = frozenset(LABELS)


@pytest.fixture(autouse=True)
def _forget_extra_hosts(request: pytest.FixtureRequest) -> None:
    """Before a test on the session's NATS server, forget hosts earlier tests added.

    Tests start extra agents (in-process or as processes, some module-scoped); once
    stopped they stay known as offline, and would count as missing in later tests
    that target the whole fleet.
    """
    if "nats_server" not in request.fixturenames:
        return
    server: NatsServer = request.getfixturevalue("nats_server")
    if server.running:
        asyncio.run(_forget_all_but_session_hosts(server.url))


async def _forget_all_but_session_hosts(url: str) -> None:
    async with Fleet(NatsOptions(servers=url), discovery_window=0.2) as fleet:
        registry = await fleet.registry()
        if registry is None:
            return
        for record in await registry.read():
            if record.host_id not in SESSION_HOSTS:
                await registry.forget(record.host_id)


@pytest.fixture(scope="session")
def wheelhouse(stack_dir: Path) -> Path:
    """The project's wheel and all its dependencies' (tests/integration/wheels.py), built
    once a session: for the agent image and for agents installed in venvs."""
    return build_wheelhouse(stack_dir / "wheelhouse")

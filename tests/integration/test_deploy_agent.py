"""The agent's deploy, rollback, remove, services and pull verbs on real engines.

Driven through the Fleet library's plain request API, one host or all three,
with images pulled from the local registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shoal.controller import Fleet
from shoal.protocol import (
    DeployArgs,
    NatsOptions,
    Order,
    Progress,
    PullArgs,
    RemoveArgs,
    RollbackArgs,
    Selector,
    ServicesArgs,
    ServiceSpec,
    Verb,
    VolumeSpec,
)
from tests.integration.conftest import Keys
from tests.poll import apoll
from tests.stack import (
    TEST_LABEL,
    DockerEngine,
    NatsServer,
    Registry,
    busybox_rootfs_tar,
    list_containers,
)

pytestmark = pytest.mark.engine
HOSTS = ["host-a", "host-b", "host-c"]


@pytest.fixture
async def fleet(nats_server: NatsServer, agents: Any, keys: Keys) -> AsyncIterator[Fleet]:
    async with Fleet(
        NatsOptions(servers=nats_server.url), signer=keys.admin.signer, timeout=30
    ) as f:
        yield f


@pytest.fixture
def service(test_label: str, engines: list[DockerEngine]) -> Any:
    """A unique service name; its containers are removed from every engine afterwards."""
    name = f"svc-{test_label}"[:60].strip("-")
    yield name
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            for c in list_containers(client, {"label": f"shoal.service={name}"}):
                c.remove(force=True)


def spec(name: str, image: str, **fields: Any) -> ServiceSpec:
    return ServiceSpec(
        name=name, image=image, network_mode="none", labels={TEST_LABEL: name}, **fields
    )


async def deploy(fleet: Fleet, svc: ServiceSpec, hosts: list[str] = HOSTS, **args: Any) -> Any:
    return await fleet.request(
        Verb.DEPLOY,
        DeployArgs(service=svc, monitor=1.0, health_timeout=30, **args),
        selector=Selector(hosts=tuple(hosts)),
    )


async def services(fleet: Fleet, name: str, hosts: list[str] = HOSTS) -> dict[str, Any]:
    result = await fleet.request(
        Verb.SERVICES, ServicesArgs(service=name), selector=Selector(hosts=tuple(hosts))
    )
    assert not result.errors and not result.missing
    return {h: (r.services[0] if r.services else None) for h, r in result.replies.items()}


def containers_of(engine: DockerEngine, name: str) -> list[Any]:
    with contextlib.closing(engine.client()) as client:
        return list_containers(client, {"label": f"shoal.service={name}"})


async def test_deploy_update_unchanged_and_rollback(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    v1 = await deploy(fleet, spec(service, app_images["v1"]))
    assert v1.ok, v1.errors
    assert {h: r.action for h, r in v1.replies.items()} == dict.fromkeys(HOSTS, "created")
    assert all(r.revision == 1 for r in v1.replies.values())

    again = await deploy(fleet, spec(service, app_images["v1"]))
    assert {h: r.action for h, r in again.replies.items()} == dict.fromkeys(HOSTS, "unchanged")

    v2 = await deploy(fleet, spec(service, app_images["v2"]))
    assert {h: (r.action, r.revision, r.previous_revision) for h, r in v2.replies.items()} == (
        dict.fromkeys(HOSTS, ("updated", 2, 1))
    )
    for engine in engines:
        (only,) = containers_of(engine, service)  # the old one is gone
        assert only.labels["shoal.revision"] == "2"
        assert only.labels["shoal.spec-hash"] == v2.replies[engine.name].spec_hash
        assert only.status == "running"
    status = await services(fleet, service)
    assert {h: (s.revision, s.state, s.health, s.previous_revision) for h, s in status.items()} == (
        dict.fromkeys(HOSTS, (2, "running", "healthy", 1))
    )

    back = await fleet.request(
        Verb.ROLLBACK,
        RollbackArgs(service=service, monitor=1.0),
        selector=Selector(hosts=("host-b",)),
    )
    assert back.ok, back.errors
    assert (back.replies["host-b"].action, back.replies["host-b"].revision) == ("rolled_back", 1)
    (only,) = containers_of(engines[1], service)
    assert only.labels["shoal.revision"] == "1"
    assert only.attrs["Config"]["Image"] == app_images["v1"]


async def test_unhealthy_revision_fails_and_restores_the_previous_one(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    assert (await deploy(fleet, spec(service, app_images["v2"]), ["host-a"])).ok
    progress: list[Progress] = []
    failed = await fleet.request(
        Verb.DEPLOY,
        DeployArgs(service=spec(service, app_images["v3"]), monitor=1.0, health_timeout=30),
        selector=Selector(hosts=("host-a",)),
        on_progress=progress.append,
    )
    error = failed.errors["host-a"]
    assert error.code == "deploy_failed"
    assert error.detail["phase"] == "health" and error.detail["restored_revision"] == 1
    assert error.detail["reason"] == "unhealthy"
    phases = [p.phase for p in progress]
    assert phases.index("pulling") < phases.index("starting") < phases.index("rolling-back")
    (only,) = containers_of(engines[0], service)
    assert only.labels["shoal.revision"] == "1" and only.status == "running"
    status = await services(fleet, service, ["host-a"])
    assert (status["host-a"].revision, status["host-a"].state) == (1, "running")


async def test_start_first_keeps_a_container_running_throughout(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    assert (await deploy(fleet, spec(service, app_images["v1"]), ["host-c"])).ok
    engine = engines[2]
    observations: list[int] = []
    done = threading.Event()

    def observe() -> None:
        with contextlib.closing(engine.client()) as client:
            while not done.is_set():
                running = client.containers.list(
                    filters={"label": f"shoal.service={service}", "status": "running"}
                )
                observations.append(len(running))

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        result = await deploy(
            fleet, spec(service, app_images["v2"]), ["host-c"], order=Order.START_FIRST
        )
    finally:
        done.set()
        watcher.join(10)
    assert result.ok, result.errors
    assert len(observations) > 5
    assert min(observations) >= 1, "no container of the service was running at some point"
    assert max(observations) == 2  # both ran side by side for a while


async def test_start_first_with_a_fixed_host_port_is_refused(
    fleet: Fleet, app_images: dict[str, str], service: str
) -> None:
    from shoal.protocol import PortSpec

    svc = ServiceSpec(
        name=service, image=app_images["v1"], ports=(PortSpec(container_port=80, host_port=18080),)
    )
    result = await deploy(fleet, svc, ["host-a"], order=Order.START_FIRST)
    assert result.errors["host-a"].code == "bad_request"
    assert "start-first" in result.errors["host-a"].message


async def test_one_operation_per_service_at_a_time(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    slow = DeployArgs(service=spec(service, app_images["v1"]), monitor=3.0)
    first = asyncio.create_task(
        fleet.request(Verb.DEPLOY, slow, selector=Selector(hosts=("host-b",)))
    )

    async def first_created() -> bool:
        return bool(await asyncio.to_thread(containers_of, engines[1], service))

    # Its container exists: the first deploy holds the service for its 3 s monitor window.
    await apoll("the first deploy's container", first_created)
    second = await fleet.request(Verb.DEPLOY, slow, selector=Selector(hosts=("host-b",)))
    assert second.errors["host-b"].code == "conflict"
    assert (await first).ok


@pytest.mark.parametrize(
    ("fields", "code", "rule"),
    [
        ({"privileged": True}, "policy_denied", "privileged"),
        (
            {"volumes": (VolumeSpec(type="bind", source="/", target="/host"),)},
            "policy_denied",
            "bind",
        ),
        ({"network_mode": "host"}, "policy_denied", "host"),
    ],
)
async def test_policy_refuses_before_anything_is_created(
    fleet: Fleet,
    app_images: dict[str, str],
    engines: list[DockerEngine],
    service: str,
    fields: dict[str, Any],
    code: str,
    rule: str,
) -> None:
    svc = spec(service, app_images["v1"]).model_copy(update=fields)
    result = await deploy(fleet, svc, ["host-a"])
    assert result.errors["host-a"].code == code
    assert rule in result.errors["host-a"].message
    assert containers_of(engines[0], service) == []


async def test_bad_input_is_refused_before_anything_runs(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    svc = spec(service, app_images["v1"]).model_dump(mode="json")
    for image in ("-rf", "app:v1 --privileged", "UPPER/case", "a\nb"):
        hostile = {"service": {**svc, "image": image}, "monitor": 1.0}
        result = await fleet.request(
            Verb.DEPLOY, _Raw(hostile), selector=Selector(hosts=("host-a",))
        )
        assert result.errors["host-a"].code == "bad_request", image
    assert containers_of(engines[0], service) == []
    missing = await fleet.request(
        Verb.ROLLBACK, RollbackArgs(service="no-such-service"), selector=Selector(hosts=("host-a",))
    )
    assert missing.errors["host-a"].code == "not_found"


async def test_remove_and_pull(
    fleet: Fleet, app_images: dict[str, str], engines: list[DockerEngine], service: str
) -> None:
    assert (await deploy(fleet, spec(service, app_images["v1"]), ["host-a", "host-b"])).ok
    removed = await fleet.request(
        Verb.REMOVE, RemoveArgs(service=service), selector=Selector(hosts=("host-a", "host-b"))
    )
    assert removed.ok and all(len(r.removed) == 1 for r in removed.replies.values())
    assert containers_of(engines[0], service) == [] == containers_of(engines[1], service)
    assert (await services(fleet, service, ["host-a"]))["host-a"] is None

    pulled = await fleet.request(
        Verb.PULL, PullArgs(image=app_images["v2"]), selector=Selector(hosts=tuple(HOSTS))
    )
    assert pulled.ok, pulled.errors
    ids = {r.image_id for r in pulled.replies.values()}
    assert len(ids) == 1 and all(
        r.architecture.startswith("amd64") for r in pulled.replies.values()
    )


class _Raw:
    """Arguments sent as they are, bypassing client-side validation (hostile input)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self.document


@pytest.fixture(scope="module")
def arm64_image(registry: Registry) -> str:
    """An image whose only variant is linux/arm64, in the local registry."""
    return registry.push_rootfs(
        "shoal-test/arm64-only", "v1", busybox_rootfs_tar(), architecture="arm64"
    )


async def test_deploy_refuses_an_image_without_a_variant_for_the_host_before_touching_it(
    fleet: Fleet,
    app_images: dict[str, str],
    arm64_image: str,
    engines: list[DockerEngine],
    service: str,
) -> None:
    assert (await deploy(fleet, spec(service, app_images["v1"]), ["host-a"])).ok
    (before,) = containers_of(engines[0], service)

    refused = await deploy(fleet, spec(service, arm64_image), ["host-a"])
    error = refused.errors["host-a"]
    assert error.code == "deploy_failed", error
    assert error.detail["reason"] == "architecture mismatch"
    assert error.detail["phase"] == "pulling"
    assert "linux/arm64" in error.message and "amd64" in error.message

    # The running service was not touched: same container, same revision, running.
    (after,) = containers_of(engines[0], service)
    assert (after.id, after.status, after.labels["shoal.revision"]) == (before.id, "running", "1")
    status = await services(fleet, service, ["host-a"])
    assert (status["host-a"].revision, status["host-a"].image) == (1, app_images["v1"])

    # pull refuses it too, for the same reason: nothing on this host could run it.
    pulled = await fleet.request(
        Verb.PULL, PullArgs(image=arm64_image), selector=Selector(hosts=("host-a",))
    )
    assert pulled.errors["host-a"].detail["reason"] == "architecture mismatch"

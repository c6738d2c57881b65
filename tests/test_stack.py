"""The real parts themselves work: NATS, three isolated engines, a registry, restarts."""

from __future__ import annotations

import contextlib
import socket

import docker
import docker.errors
import nats
import pytest
import requests

from tests.stack import (
    BUSYBOX_IMAGE,
    TEST_LABEL,
    DockerEngine,
    NatsServer,
    Registry,
    free_port,
)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.nats
async def test_nats_server_delivers_and_has_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url, connect_timeout=5, allow_reconnect=False)
    try:
        sub = await nc.subscribe("shoal.test.stack")
        await nc.publish("shoal.test.stack", b"ping")
        await nc.flush(timeout=5)
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"ping"
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


@pytest.mark.engine
def test_every_engine_runs_a_busybox_container(
    engines: list[DockerEngine], test_label: str
) -> None:
    assert [engine.name for engine in engines] == ["host-a", "host-b", "host-c"]
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            container = client.containers.run(
                BUSYBOX_IMAGE,
                ["sh", "-c", 'echo "hello from $SHOAL_HOST"'],
                environment={"SHOAL_HOST": engine.name},
                network_mode="none",
                labels={TEST_LABEL: test_label},
                detach=True,
            )
            assert container.wait(timeout=30)["StatusCode"] == 0
            assert container.logs() == f"hello from {engine.name}\n".encode()


@pytest.mark.engine
def test_engines_are_separate_hosts(engines: list[DockerEngine], test_label: str) -> None:
    first, *others = engines
    with contextlib.closing(first.client()) as client:
        client.containers.create(
            BUSYBOX_IMAGE,
            ["true"],
            name=f"only-on-a-{test_label}",
            network_mode="none",
            labels={TEST_LABEL: test_label},
        )
        first_id = client.info()["ID"]
    engine_ids = {first_id}
    for engine in others:
        with contextlib.closing(engine.client()) as client:
            assert client.containers.list(all=True, filters={"label": TEST_LABEL}) == []
            with pytest.raises(docker.errors.NotFound):
                client.containers.get(f"only-on-a-{test_label}")
            engine_ids.add(client.info()["ID"])
    assert len(engine_ids) == len(engines)


@pytest.mark.engine
def test_image_pushed_from_one_engine_pulls_on_another(
    engines: list[DockerEngine], registry: Registry, test_label: str
) -> None:
    ref = registry.ref(f"shoal-test/{test_label}", "v1")
    source, target = engines[0], engines[1]
    with (
        contextlib.closing(source.client()) as src,
        contextlib.closing(target.client()) as dst,
    ):
        try:
            assert src.images.get(BUSYBOX_IMAGE).tag(ref)
            src.images.push(ref)
            assert f"shoal-test/{test_label}" in registry.catalog()

            with pytest.raises(docker.errors.ImageNotFound):
                dst.images.get(ref)
            dst.images.pull(ref)
            out = dst.containers.run(
                ref,
                ["echo", "pulled"],
                network_mode="none",
                labels={TEST_LABEL: test_label},
                remove=True,
            )
            assert out == b"pulled\n"
        finally:
            for client in (src, dst):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    client.images.remove(ref)


@pytest.mark.engine
def test_engine_stop_and_start_keeps_containers(
    engines: list[DockerEngine], test_label: str
) -> None:
    engine = engines[2]
    labels = {TEST_LABEL: test_label}
    with contextlib.closing(engine.client()) as client:
        done = client.containers.run(
            BUSYBOX_IMAGE, ["true"], network_mode="none", labels=labels, detach=True
        )
        done.wait(timeout=30)
        service = client.containers.run(
            BUSYBOX_IMAGE,
            ["sleep", "3600"],
            init=True,  # sleep as pid 1 would ignore SIGTERM and hold up the stop 10 s
            network_mode="none",
            labels=labels,
            restart_policy={"Name": "always"},
            detach=True,
        )
        pid_before = engine.pid

        engine.stop()
        assert not engine.running
        with pytest.raises(requests.exceptions.ConnectionError):
            client.ping()

        engine.start()
        assert engine.running
        assert engine.pid != pid_before
        listed = {
            c.id: c.status for c in client.containers.list(all=True, filters={"label": TEST_LABEL})
        }
        assert listed.keys() == {done.id, service.id}
        assert listed[done.id] == "exited"
        service.reload()
        assert service.status == "running"  # restart policy "always" brings it back

"""``shoal deploy`` end to end: a compose file, three real engines, the local registry."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine
HOSTS = ["host-a", "host-b", "host-c"]

COMPOSE = """
services:
  {name}:
    image: ${{IMAGE}}
    network_mode: none
    labels:
      {label_key}: "{label}"
    deploy:
      update_config:
        parallelism: 1
        monitor: 1s
        failure_action: pause
"""


@pytest.fixture
def app(tmp_path: Path, test_label: str, engines: list[DockerEngine]) -> Iterator[tuple[str, Path]]:
    """A compose file for a service unique to the test; its containers removed afterwards."""
    name = f"app-{test_label}"[:60].strip("-")
    path = tmp_path / "compose.yml"
    path.write_text(COMPOSE.format(name=name, label_key=TEST_LABEL, label=test_label))
    yield name, path
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            for c in list_containers(client, {"label": f"shoal.service={name}"}):
                c.remove(force=True)


def deploy(nats_server: NatsServer, compose: Path, image: str, *args: str) -> CliResult:
    return run_shoal("deploy", "-f", str(compose), *args, server=nats_server.url, IMAGE=image)


def revisions(nats_server: NatsServer, name: str) -> dict[str, tuple[int, str, str]]:
    result = run_shoal("services", name, "--json", server=nats_server.url)
    assert result.code == 0, result.stderr
    out = {}
    for host, reply in result.json()["replies"].items():
        (svc,) = reply["services"]
        out[host] = (svc["revision"], svc["image"].rsplit(":", 1)[-1], svc["state"])
    return out


def events(result: CliResult) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_deploy_unchanged_then_host_by_host(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_images: dict[str, str],
    app: tuple[str, Path],
) -> None:
    name, compose = app
    first = deploy(nats_server, compose, app_images["v1"], "--json", "--parallel", "100%")
    assert first.code == 0, first.stderr
    doc = first.json()
    assert doc["rollout"]["verdict"] == "completed"
    assert doc["rollout"]["hosts"] == dict.fromkeys(HOSTS, "created")
    assert sorted(doc["targeted"]) == HOSTS and doc["missing"] == [] and doc["errors"] == {}

    again = deploy(nats_server, compose, app_images["v1"], "--json")
    assert again.code == 0
    assert again.json()["rollout"]["hosts"] == dict.fromkeys(HOSTS, "unchanged")

    v2 = deploy(nats_server, compose, app_images["v2"], "--jsonl")
    assert v2.code == 0, v2.stderr
    stream = events(v2)
    order = [
        (e["event"], e.get("hosts") or e.get("host"))
        for e in stream
        if e["event"] in ("wave_started", "host_finished")
    ]
    assert order == [
        step for host in HOSTS for step in (("wave_started", [host]), ("host_finished", host))
    ]
    assert all(e["outcome"] == "updated" for e in stream if e["event"] == "host_finished")
    assert stream[-1]["event"] == "rollout_finished" and stream[-1]["verdict"] == "completed"
    assert revisions(nats_server, name) == dict.fromkeys(HOSTS, (2, "v2", "running"))


def test_a_failing_revision_pauses_or_rolls_back(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_images: dict[str, str],
    app: tuple[str, Path],
) -> None:
    name, compose = app
    assert deploy(nats_server, compose, app_images["v2"], "--parallel", "100%").code == 0

    paused = deploy(nats_server, compose, app_images["v3"], "--json", "--failure-action", "pause")
    assert paused.code == 1, paused.stderr
    doc = paused.json()
    assert doc["rollout"]["verdict"] == "paused"
    assert doc["rollout"]["hosts"] == {"host-a": "failed", "host-b": "skipped", "host-c": "skipped"}
    failure = doc["errors"]["host-a"]
    assert failure["code"] == "deploy_failed" and failure["detail"]["restored_revision"] == 1
    assert revisions(nats_server, name) == dict.fromkeys(HOSTS, (1, "v2", "running"))

    rolled = deploy(
        nats_server,
        compose,
        app_images["v3"],
        "--json",
        "--parallel",
        "2",
        "--failure-action",
        "rollback",
        "--max-failure-ratio",
        "0.5",
    )
    assert rolled.code == 1
    assert rolled.json()["rollout"]["verdict"] == "rolled_back"
    assert all(state[1:] == ("v2", "running") for state in revisions(nats_server, name).values())


def test_a_host_whose_agent_is_down_is_missing_and_the_rollout_pauses(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    app_images: dict[str, str],
    app: tuple[str, Path],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> None:
    _, compose = app
    down = AgentProcess(
        stack_dir / "down",
        server=nats_server.url,
        host_id=f"aaa-down-{test_label}"[:64],
        docker_host=engines[0].host,
        labels={"deploy-test": test_label},
        trust=keys.trust,
    )
    down.start()
    try:
        # Known to the registry (an answer to a ping can come before the first heartbeat
        # is stored), then gone.
        poll(
            "the registry to know the host",
            lambda: (
                run_shoal("agents", "--json", "-H", down.host_id, server=nats_server.url)
                .json()
                .get("agents")
            ),
            15,
        )
        down.kill()
        result = deploy(
            nats_server,
            compose,
            app_images["v1"],
            "--json",
            "--timeout",
            "5",
            "-H",
            down.host_id,
            "-H",
            "host-b",
        )
        doc = result.json()
        assert result.code == 4, result.stderr
        assert doc["missing"] == [down.host_id]
        assert doc["rollout"]["hosts"][down.host_id] == "missing"
        assert doc["rollout"]["verdict"] == "paused"
    finally:
        down.kill()
        run_shoal("agents", "forget", down.host_id, server=nats_server.url)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    userns_mode: host\n", "userns_mode"),
        ("    links: [db]\n", "links"),
    ],
)
def test_unsupported_compose_keys_are_refused_by_name(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_images: dict[str, str],
    app: tuple[str, Path],
    engines: list[DockerEngine],
    extra: str,
    message: str,
) -> None:
    name, compose = app
    compose.write_text(
        compose.read_text().replace("    network_mode: none\n", "    network_mode: none\n" + extra)
    )
    result = deploy(nats_server, compose, app_images["v1"])
    assert result.code == 2
    assert message in result.stderr
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            assert list_containers(client, {"label": f"shoal.service={name}"}) == []


@pytest.mark.parametrize("image", ["-rf", "app:v1 --privileged", "UPPER/case"])
def test_bad_image_references_are_refused_before_anything_runs(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app: tuple[str, Path],
    image: str,
) -> None:
    _, compose = app
    result = deploy(nats_server, compose, image)
    assert result.code == 2, result.stderr
    assert "image" in result.stderr


def test_unknown_services_are_refused(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_images: dict[str, str],
    app: tuple[str, Path],
) -> None:
    _, compose = app
    result = deploy(nats_server, compose, app_images["v1"], "no-such-service")
    assert result.code == 2
    assert "no-such-service" in result.stderr

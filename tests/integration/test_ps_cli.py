"""End to end through the real CLI: real agents, real engines, real NATS."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.poll import poll
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer, free_port

pytestmark = pytest.mark.engine

HOSTS = ["host-a", "host-b", "host-c"]


def shoal(nats_server: NatsServer, *args: str) -> CliResult:
    return run_shoal(*args, server=nats_server.url)


def run_container(engine: DockerEngine, label: str, name: str, *, start: bool = True) -> str:
    with contextlib.closing(engine.client()) as client:
        container = client.containers.create(
            BUSYBOX_IMAGE,
            ["sleep", "3600"],
            name=name,
            labels={TEST_LABEL: label, "app": name},
            network_mode="none",
            stop_signal="SIGKILL",
        )
        if start:
            container.start()
        return str(container.id)


@pytest.fixture
def containers(engines: list[DockerEngine], test_label: str) -> dict[str, tuple[str, str]]:
    """One running container per host: host id -> (name, id)."""
    made = {}
    for engine in engines:
        name = f"{test_label}-{engine.name}"
        made[engine.name] = (name, run_container(engine, test_label, name))
    return made


def test_ps_lists_each_container_under_its_own_host(
    nats_server: NatsServer, agents: dict[str, AgentProcess], containers: dict[str, tuple[str, str]]
) -> None:
    result = shoal(nats_server, "ps", "--json", "--filter", f"label={TEST_LABEL}")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert sorted(doc["targeted"]) == HOSTS
    assert doc["missing"] == [] and doc["errors"] == {}
    for host, (name, container_id) in containers.items():
        listed = {c["id"]: c for c in doc["replies"][host]["containers"]}
        assert container_id in listed, f"{name} missing on {host}"
        assert listed[container_id]["name"] == name
        assert listed[container_id]["state"] == "running"
        assert listed[container_id]["image"] == BUSYBOX_IMAGE
        for other in set(HOSTS) - {host}:
            others = {c["id"] for c in doc["replies"][other]["containers"]}
            assert container_id not in others, f"{name} of {host} also shown on {other}"


def test_ps_table_has_host_column_and_footer(
    nats_server: NatsServer, agents: dict[str, AgentProcess], containers: dict[str, tuple[str, str]]
) -> None:
    result = shoal(nats_server, "ps")
    assert result.code == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header[:3] == ["HOST", "CONTAINER", "ID"]
    for host, (name, container_id) in containers.items():
        row = next(line for line in result.stdout.splitlines() if name in line)
        assert row.split()[0] == host
        assert container_id[:12] in row
    assert "3/3 hosts answered ok" in result.stderr


def test_ps_all_and_filters(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    test_label: str,
) -> None:
    engine = engines[0]
    stopped = run_container(engine, test_label, f"{test_label}-stopped", start=False)
    running = run_container(engine, test_label, f"{test_label}-running")

    def ids(*args: str) -> set[str]:
        result = shoal(nats_server, "ps", "--json", "-H", engine.name, *args)
        assert result.code == 0, result.stderr
        return {c["id"] for c in result.json()["replies"][engine.name]["containers"]}

    label = f"label={TEST_LABEL}={test_label}"
    assert ids("--filter", label) == {running}
    assert ids("-a", "--filter", label) == {running, stopped}
    assert ids("-a", "--filter", label, "--filter", "status=created") == {stopped}
    assert ids("-a", "--filter", f"name={test_label}-stopped") == {stopped}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-H", "host-a"], ["host-a"]),
        (["-H", "host-a", "-H", "host-c"], ["host-a", "host-c"]),
        (["-H", "host-?"], HOSTS),
        (["-l", "role=web"], ["host-a", "host-b"]),
        (["-l", "role=web", "-l", "zone=eu"], ["host-a"]),
        (["-l", "role=web,zone=eu"], ["host-a"]),
        (["-l", "!canary"], ["host-a", "host-c"]),
        (["-l", "zone in (us,ap)"], ["host-b"]),
        (["-l", "role notin (web)"], ["host-c"]),
        (["-l", "arch=amd64", "-H", "host-b"], ["host-b"]),
        (["-H", "host-a", "-H", "host-b", "-l", "zone=eu"], ["host-a"]),
    ],
)
def test_host_globs_and_label_selectors_pick_the_right_hosts(
    nats_server: NatsServer, agents: dict[str, AgentProcess], args: list[str], expected: list[str]
) -> None:
    result = shoal(nats_server, "ps", "--json", *args)
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["targeted"] == expected
    assert sorted(doc["replies"]) == expected


def test_no_matching_host_exits_3(nats_server: NatsServer, agents: dict[str, AgentProcess]) -> None:
    result = shoal(nats_server, "ps", "--json", "-l", "role=nothing-has-this")
    assert result.code == 3
    assert result.json()["targeted"] == []


@pytest.mark.parametrize(
    "args",
    [
        ["-H", "a.b"],
        ["-H", ">"],
        ["-H", "host a"],
        ["-l", "role in (web"],
        ["-l", "=web"],
        ["--limit", "0"],
        ["--limit", "150%"],
        ["--filter", "color=red"],
        ["--filter", "status=sleeping"],
    ],
)
def test_bad_targets_are_usage_errors(
    nats_server: NatsServer, agents: dict[str, AgentProcess], args: list[str]
) -> None:
    result = shoal(nats_server, "ps", *args)
    assert result.code == 2, (result.stdout, result.stderr)
    assert "error" in result.stderr.lower()


def test_limit_picks_a_random_subset(
    nats_server: NatsServer, agents: dict[str, AgentProcess]
) -> None:
    for limit, count in (("1", 1), ("2", 2), ("50%", 2), ("100%", 3)):
        result = shoal(nats_server, "ps", "--json", "--limit", limit)
        assert result.code == 0, result.stderr
        doc = result.json()
        assert len(doc["targeted"]) == count
        assert set(doc["targeted"]) <= set(HOSTS)
        assert sorted(doc["replies"]) == doc["targeted"]


def test_agents_inventory_shows_facts(
    nats_server: NatsServer, agents: dict[str, AgentProcess]
) -> None:
    result = shoal(nats_server, "agents", "--json")
    assert result.code == 0, result.stderr
    records = {a["host_id"]: a for a in result.json()["agents"]}
    for host in HOSTS:
        record = records[host]
        assert record["state"] == "online"
        facts = record["facts"]
        assert facts["docker"]["reachable"] is True
        assert facts["docker"]["version"].startswith(("20.", "2", "1"))
        assert facts["arch"] in ("amd64", "arm64", "arm")
        assert facts["os"] == "linux"
        assert facts["labels"] == agents[host].labels
    table = shoal(nats_server, "agents")
    assert table.code == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["HOST", "STATE", "LAST"]
    assert any(line.split()[:2] == ["host-b", "online"] for line in table.stdout.splitlines())


@pytest.fixture
def extra_agent(
    nats_server: NatsServer, engines: list[DockerEngine], stack_dir: Path, test_label: str
) -> Iterator[AgentProcess]:
    """A fourth agent (on host-a's engine) that a test may kill or stop."""
    agent = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id=f"x-{test_label}"[:64],
        docker_host=engines[0].host,
        labels={"role": "extra"},
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        run_shoal("agents", "forget", agent.host_id, server=nats_server.url)


def agent_state(nats_server: NatsServer, host_id: str) -> str | None:
    result = shoal(nats_server, "agents", "--json")
    for record in result.json()["agents"]:
        if record["host_id"] == host_id:
            return str(record["state"])
    return None


def test_killed_agent_is_reported_missing_with_exit_4_until_forgotten(
    nats_server: NatsServer, agents: dict[str, AgentProcess], extra_agent: AgentProcess
) -> None:
    host = extra_agent.host_id
    poll("the extra agent in the registry", lambda: agent_state(nats_server, host) == "online")
    extra_agent.kill()

    # Still "online" in the registry: the request is sent, nobody answers.
    result = shoal(nats_server, "ps", "--json", "--timeout", "2", "-l", "role in (extra,db)")
    assert result.code == 4, result.stderr
    doc = result.json()
    assert host in doc["targeted"] and doc["missing"] == [host]
    assert sorted(doc["replies"]) == ["host-c"]

    # After three missed heartbeats it is offline: reported at once, still exit 4.
    poll("the killed agent to go offline", lambda: agent_state(nats_server, host) == "offline")
    started = time.monotonic()
    result = shoal(nats_server, "ps", "--json", "--timeout", "30", "-H", host)
    assert time.monotonic() - started < 15, "an offline host must not be waited for"
    assert result.code == 4
    assert result.json()["missing"] == [host] and result.json()["offline"] == [host]
    table = shoal(nats_server, "ps", "-H", host)
    assert f"missing {host}: offline" in table.stderr

    forgotten = shoal(nats_server, "agents", "forget", host)
    assert forgotten.code == 0, forgotten.stderr
    assert agent_state(nats_server, host) is None
    assert shoal(nats_server, "ps", "--json", "-H", host).code == 3


def test_sigterm_exits_0_and_leaves_the_fleet_at_once(
    nats_server: NatsServer, agents: dict[str, AgentProcess], extra_agent: AgentProcess
) -> None:
    host = extra_agent.host_id
    poll("the extra agent in the registry", lambda: agent_state(nats_server, host) == "online")
    assert extra_agent.stop() == 0, extra_agent.log()
    # The leaving heartbeat marks it offline without waiting for missed heartbeats.
    assert agent_state(nats_server, host) == "offline"
    assert "stopped" in extra_agent.log()


def test_second_agent_with_a_live_host_id_refuses_to_start(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    stack_dir: Path,
) -> None:
    duplicate = AgentProcess(
        stack_dir / "dup", server=nats_server.url, host_id="host-a", docker_host=engines[1].host
    )
    duplicate.start(wait=False)
    assert duplicate.process is not None
    code = duplicate.process.wait(30)
    assert code == 1
    assert "already served" in duplicate.log()
    # The original agent still serves.
    result = shoal(nats_server, "ps", "--json", "-H", "host-a")
    assert result.code == 0 and "host-a" in result.json()["replies"]


def test_stopped_engine_gives_docker_unavailable_then_recovers_without_restart(
    nats_server: NatsServer, agents: dict[str, AgentProcess], engines: list[DockerEngine]
) -> None:
    engine = engines[2]
    agent = agents[engine.name]
    pid = agent.pid
    engine.stop()
    try:
        result = shoal(nats_server, "ps", "--json")
        assert result.code == 1, result.stderr
        doc = result.json()
        assert doc["errors"][engine.name]["code"] == "docker_unavailable"
        assert sorted(doc["replies"]) == ["host-a", "host-b"]
        assert doc["missing"] == []
        table = shoal(nats_server, "ps")
        assert f"error {engine.name}: docker_unavailable" in table.stderr
    finally:
        engine.start()
    poll(
        "the agent to serve again",
        lambda: shoal(nats_server, "ps", "--json", "-H", engine.name).code == 0,
    )
    assert agent.pid == pid and agent.process is not None and agent.process.poll() is None
    facts = shoal(nats_server, "agents", "--json").json()["agents"]
    poll(
        "the heartbeat to report docker reachable",
        lambda: next(
            a
            for a in shoal(nats_server, "agents", "--json").json()["agents"]
            if a["host_id"] == engine.name
        )["facts"]["docker"]["reachable"],
    )
    assert facts


def test_agents_survive_a_nats_restart(
    nats_server: NatsServer, agents: dict[str, AgentProcess]
) -> None:
    nats_server.stop()
    nats_server.start()
    poll(
        "every agent to reconnect and answer",
        lambda: shoal(nats_server, "ps", "--json", "--timeout", "2").code == 0,
        deadline=30,
    )
    assert all(a.process is not None and a.process.poll() is None for a in agents.values())


def test_shoal_up_runs_nats_and_a_local_agent(
    engines: list[DockerEngine], stack_dir: Path, test_label: str
) -> None:
    port, web_port = free_port(), free_port()
    server = f"nats://127.0.0.1:{port}"
    store = stack_dir / f"up-{test_label}"
    process = subprocess.Popen(
        [
            *__import__("tests.integration.agents", fromlist=["_script"])._script("shoal"),
            "up",
            "--port",
            str(port),
            "--store",
            str(store),
            "--host-id",
            "up-host",
            "--docker-host",
            engines[0].host,
            "--web-port",
            str(web_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # No --key: the CLI signs with the default key that shoal up created and trusts.
        poll(
            "shoal up to serve ps",
            lambda: run_shoal("ps", "--json", server=server, unset=("SHOAL_KEY",)).code == 0,
        )
        doc = run_shoal("ps", "--json", server=server, unset=("SHOAL_KEY",)).json()
        assert doc["targeted"] == ["up-host"]
        refused = run_shoal("ps", "--json", server=server)  # the session's admin key
        assert refused.json()["errors"]["up-host"]["code"] == "unauthorized"
        agents_doc = run_shoal("agents", "--json", server=server).json()
        assert [a["host_id"] for a in agents_doc["agents"]] == ["up-host"]

        def dashboard() -> dict[str, Any]:
            url = f"http://127.0.0.1:{web_port}/api/fleet"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return dict(json.load(reply))

        fleet = poll("the dashboard of shoal up", dashboard, 30, ignore=(OSError,))
        assert [h["host"] for h in fleet["hosts"]] == ["up-host"]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
    assert code == 0, process.stderr.read() if process.stderr else ""
    assert (store / "jetstream").is_dir()

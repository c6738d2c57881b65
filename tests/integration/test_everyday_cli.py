"""Everyday commands end to end: images, logs, stats, events, inspect, info, start, stop,
restart, rm and the agent's metrics, through the real CLI against real engines and NATS."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import docker
import pytest

from shoal.agent import __version__ as agent_version
from tests.integration.agents import AgentProcess, CliResult, _script, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import (
    BUSYBOX_IMAGE,
    TEST_LABEL,
    DockerEngine,
    NatsServer,
    free_port,
    list_containers,
)

pytestmark = pytest.mark.engine

HOSTS = ["host-a", "host-b", "host-c"]
STREAM_DEADLINE = 20.0


def shoal(nats_server: NatsServer, *args: str, **env: str) -> CliResult:
    return run_shoal(*args, server=nats_server.url, **env)


def shoal_all(nats_server: NatsServer, *commands: tuple[str, ...]) -> list[CliResult]:
    """Independent commands at once (each start of the CLI costs about a second)."""
    return at_once(*(functools.partial(shoal, nats_server, *args) for args in commands))


def at_once(*calls: Callable[[], CliResult]) -> list[CliResult]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def make_container(
    engine: DockerEngine,
    label: str,
    name: str,
    command: list[str],
    *,
    start: bool = True,
    labels: dict[str, str] | None = None,
    **options: Any,
) -> str:
    with contextlib.closing(engine.client()) as client:
        container = client.containers.create(
            BUSYBOX_IMAGE,
            command,
            name=name,
            labels={TEST_LABEL: label, **(labels or {})},
            network_mode="none",
            stop_signal="SIGKILL",
            environment={"HOST_ID": engine.name},
            **options,
        )
        if start:
            container.start()
        return str(container.id)


SAY_HELLO = ["sh", "-c", 'echo "hello from $HOST_ID"; echo "second line"; exec sleep 3600']


@pytest.fixture
def app_containers(engines: list[DockerEngine], test_label: str) -> dict[str, str]:
    """On every host a running container of the same name: host id -> container id."""
    name = f"{test_label}-app"
    return {e.name: make_container(e, test_label, name, SAY_HELLO) for e in engines}


class Streaming:
    """A CLI process whose stdout and stderr lines are read as they come."""

    def __init__(self, nats_server: NatsServer, *args: str) -> None:
        self.process = subprocess.Popen(
            [*_script("shoal"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NATS_URL": nats_server.url},
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout) if line.strip()]

    def wait_for(self, what: str, check: Any, deadline: float = STREAM_DEADLINE) -> None:
        def exited() -> str | None:
            code = self.process.poll()
            return None if code is None or check() else f"the command exited with {code}"

        poll(
            what,
            check,
            deadline,
            abort=exited,
            context=lambda: (
                f"stdout: {''.join(self.stdout)[-3000:]}\nstderr: {''.join(self.stderr)[-3000:]}"
            ),
        )

    def interrupt(self, deadline: float = 15.0) -> int:
        """Ctrl-C, as a user would press it; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(deadline)
        finally:
            self.close()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for reader in self._readers:
            reader.join(10)


@contextlib.contextmanager
def streaming(nats_server: NatsServer, *args: str) -> Iterator[Streaming]:
    process = Streaming(nats_server, *args)
    try:
        yield process
    finally:
        process.close()


# --- images -------------------------------------------------------------------------------


def _tar(content: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def import_image(client: docker.DockerClient, ref: str, content: str, label: str) -> str:
    repo, _, tag = ref.rpartition(":")
    client.api.import_image_from_data(
        _tar(content), repository=repo, tag=tag, changes=[f"LABEL {TEST_LABEL}={label}"]
    )
    return str(client.images.get(ref).id)


def test_images_per_host_and_fleet_view(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    test_label: str,
) -> None:
    a, b, c = engines
    shared = f"shoal-test/{test_label}:shared"
    only_a = f"shoal-test/{test_label}:only-a"
    with (
        contextlib.closing(a.client()) as ca,
        contextlib.closing(b.client()) as cb,
        contextlib.closing(c.client()) as cc,
    ):
        same_id = import_image(ca, shared, "the same bytes", test_label)
        cb.images.load(b"".join(ca.images.get(shared).save(named=True)))  # the very same image
        other_id = import_image(cc, shared, "other bytes", test_label)
        only_a_id = import_image(ca, only_a, "only on a", test_label)
    assert same_id != other_id

    result, table, view = shoal_all(
        nats_server, ("images", "--json"), ("images", "-H", "host-a"), ("images", "--fleet")
    )
    assert result.code == 0, result.stderr
    doc = result.json()
    assert sorted(doc["targeted"]) == HOSTS and doc["errors"] == {} and doc["missing"] == []

    def image(host: str, image_id: str) -> dict[str, Any]:
        return next(i for i in doc["replies"][host]["images"] if i["id"] == image_id)

    assert image("host-a", same_id)["repo_tags"] == [shared]
    assert image("host-b", same_id)["repo_tags"] == [shared]
    assert image("host-c", other_id)["repo_tags"] == [shared]
    assert image("host-a", only_a_id)["architecture"] in ("amd64", "arm64", "arm")
    assert image("host-a", only_a_id)["size"] > 0
    assert all(
        i["id"] != only_a_id for h in ("host-b", "host-c") for i in doc["replies"][h]["images"]
    )

    spread = {row["image"]: row for row in doc["fleet"]}
    assert spread[shared]["present"] == HOSTS
    assert spread[shared]["missing"] == []
    assert spread[shared]["different"] == ["host-c"]
    assert spread[shared]["variants"] == [
        {"id": same_id, "hosts": ["host-a", "host-b"]},
        {"id": other_id, "hosts": ["host-c"]},
    ]
    assert spread[only_a]["missing"] == ["host-b", "host-c"]
    assert spread[only_a]["uniform"] is False
    assert spread[BUSYBOX_IMAGE]["missing"] == []

    assert table.code == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["HOST", "REPOSITORY", "TAG", "IMAGE"]
    row = next(line for line in table.stdout.splitlines() if "only-a" in line).split()
    assert row[:4] == ["host-a", f"shoal-test/{test_label}", "only-a", only_a_id[7:19]]
    assert row[-1] in ("amd64", "arm64") or row[-1].startswith("arm")
    assert "1/1 hosts answered ok" in table.stderr

    assert view.code == 0, view.stderr
    shared_row = next(line for line in view.stdout.splitlines() if line.startswith(shared + " "))
    assert "3/3" in shared_row and "differs" in shared_row and "host-c" in shared_row
    only_row = next(line for line in view.stdout.splitlines() if line.startswith(only_a + " "))
    assert "1/3" in only_row and "missing" in only_row and "host-b, host-c" in only_row


# --- logs ---------------------------------------------------------------------------------


def test_logs_prefix_every_line_with_its_host(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_containers: dict[str, str],
    test_label: str,
) -> None:
    name = f"{test_label}-app"

    def both_lines_everywhere() -> bool:
        result = shoal(nats_server, "logs", name, "--json")
        replies = result.json()["replies"].values()
        return result.code == 0 and all(len(r["lines"]) == 2 for r in replies)

    poll("both lines in every host's logs", both_lines_everywhere)
    result, table, missing = shoal_all(
        nats_server,
        ("logs", name, "--json"),
        ("logs", name, "--tail", "1", "--timestamps", "-H", "host-a", "-H", "host-b"),
        ("logs", "no-such-container-anywhere", "--json"),
    )
    doc = result.json()
    for host in HOSTS:
        reply = doc["replies"][host]
        assert reply["container"]["id"] == app_containers[host]
        assert [line["text"] for line in reply["lines"]] == [f"hello from {host}", "second line"]
        assert all(line["time"] for line in reply["lines"])

    assert table.code == 0, table.stderr
    stamped = sorted(table.stdout.splitlines())
    assert len(stamped) == 2, stamped
    for host, line in zip(("host-a", "host-b"), stamped, strict=True):
        assert re.fullmatch(rf"{host} \| \d{{4}}-\d\d-\d\dT\S+ second line", line), line
    assert missing.code == 1
    assert {e["code"] for e in missing.json()["errors"].values()} == {"not_found"}
    assert sorted(missing.json()["errors"]) == HOSTS


def say(engine: DockerEngine, container_id: str, text: str) -> None:
    """Write a line to the container's own stdout, from outside, as if it logged it."""
    with contextlib.closing(engine.client()) as client:
        client.containers.get(container_id).exec_run(["sh", "-c", f"echo {text} > /proc/1/fd/1"])


def test_logs_follow_streams_new_lines_from_two_hosts_and_stops_them(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    app_containers: dict[str, str],
    test_label: str,
) -> None:
    name = f"{test_label}-app"
    followed = {e.name: e for e in engines[:2]}
    args = ["logs", name, "-f", "--tail", "0", "--json", "-H", "host-a", "-H", "host-b"]
    with streaming(nats_server, *args) as stream:

        def markers() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {host: set() for host in followed}
            for line in stream.json_lines():
                if line["type"] == "line" and line["text"].startswith("marker-"):
                    seen[line["host"]].add(line["text"])
            return seen

        written = 0

        def every_host_streams() -> bool:
            nonlocal written
            if all(markers().values()):
                return True
            written += 1  # written after the command started, so only a live stream has it
            for host, engine in followed.items():
                say(engine, app_containers[host], f"marker-{host}-{written}")
            return False

        stream.wait_for("a marker line from both hosts", every_host_streams)
        seen = markers()
        for host in followed:
            assert all(m.startswith(f"marker-{host}-") for m in seen[host]), seen
        greeting = [line for line in stream.json_lines() if "hello from" in line.get("text", "")]
        assert greeting == [], "--tail 0 shows no old line"
        code = stream.interrupt()
    assert code == 0, "".join(stream.stderr)
    final = stream.json_lines()[-1]
    assert final["type"] == "result" and final["exit_code"] == 0
    assert sorted(final["replies"]) == sorted(followed)
    for host in followed:
        assert final["replies"][host]["ended"] == "cancelled"
        assert final["replies"][host]["streamed"] >= len(seen[host])
    assert "2/2 hosts answered ok" in "".join(stream.stderr)


# --- stats --------------------------------------------------------------------------------


def test_stats_per_container_per_host_and_fleet(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    app_containers: dict[str, str],
    test_label: str,
) -> None:
    busy = make_container(
        engines[0],
        test_label,
        f"{test_label}-busy",
        ["sh", "-c", "while :; do :; done"],
        nano_cpus=500_000_000,
    )
    result, table = shoal_all(nats_server, ("stats", "--json"), ("stats",))
    assert result.code == 0, result.stderr
    doc = result.json()
    assert sorted(doc["replies"]) == HOSTS
    for host, container_id in app_containers.items():
        reply = doc["replies"][host]
        sample = next(c for c in reply["containers"] if c["id"] == container_id)
        assert sample["name"] == f"{test_label}-app"
        assert sample["memory_usage"] > 0 and sample["memory_limit"] > 0
        assert sample["pids"] >= 1
        assert reply["host"]["containers"] == len(reply["containers"])
        assert reply["host"]["cpus"] >= 1 and reply["host"]["memory_total"] > 0
        assert reply["host"]["memory_usage"] == sum(c["memory_usage"] for c in reply["containers"])
    hog = next(c for c in doc["replies"]["host-a"]["containers"] if c["id"] == busy)
    assert 5 < hog["cpu_percent"] <= 60, hog  # limited to half a CPU
    totals = doc["totals"]
    assert totals["hosts"] == 3
    assert totals["containers"] == sum(len(r["containers"]) for r in doc["replies"].values())
    assert totals["memory_usage"] == sum(r["host"]["memory_usage"] for r in doc["replies"].values())

    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["HOST", "CONTAINER", "ID", "NAME", "CPU"]
    row = next(line for line in lines if f"{test_label}-busy" in line).split()
    assert row[:3] == ["host-a", busy[:12], f"{test_label}-busy"]
    assert any(line.split()[:1] == ["fleet"] and "running" in line for line in lines)
    assert sum(1 for line in lines if line.split()[:1] == ["host-a"] and "CPUs" in line) == 1


def test_stats_watch_refreshes_until_interrupted(
    nats_server: NatsServer, agents: dict[str, AgentProcess]
) -> None:
    args = ["stats", "--watch", "--interval", "1", "--json", "-H", "host-b"]
    with streaming(nats_server, *args) as stream:
        stream.wait_for("two snapshots", lambda: len(stream.json_lines()) >= 2)
        code = stream.interrupt()
    assert code == 0, "".join(stream.stderr)
    snapshots = stream.json_lines()
    assert all(s["verb"] == "stats" and s["replies"].keys() == {"host-b"} for s in snapshots)
    assert len({s["request_id"] for s in snapshots}) == len(snapshots)


# --- events -------------------------------------------------------------------------------


def test_events_show_a_container_start_and_an_engine_loss(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    test_label: str,
) -> None:
    engine_a, engine_c = engines[0], engines[2]
    name = f"{test_label}-evt"
    with streaming(nats_server, "events", "--json", "-H", "host-a", "-H", "host-c") as stream:
        stream.wait_for("the watch to begin", lambda: "watching" in "".join(stream.stderr))
        container_id = make_container(engine_a, test_label, name, ["sleep", "3600"])

        def container_event(action: str) -> dict[str, Any] | None:
            for event in stream.json_lines():
                c = event.get("container") or {}
                if c.get("id") == container_id and c.get("action") == action:
                    return event
            return None

        stream.wait_for("the container's start event", lambda: container_event("start"))
        started = container_event("start")
        assert started is not None
        assert started["host_id"] == "host-a" and started["kind"] == "container"
        assert started["container"]["name"] == name
        assert started["container"]["image"] == BUSYBOX_IMAGE
        assert container_event("create") is not None

        def agent_event(host: str, kind: str) -> bool:
            return any(e["host_id"] == host and e["kind"] == kind for e in stream.json_lines())

        engine_c.stop()
        try:
            stream.wait_for("host-c's engine loss", lambda: agent_event("host-c", "engine_lost"))
        finally:
            engine_c.start()
        stream.wait_for("host-c's engine back", lambda: agent_event("host-c", "engine_regained"))
        code = stream.interrupt()
    assert code == 0, "".join(stream.stderr)
    assert all(e["host_id"] in ("host-a", "host-c") for e in stream.json_lines())

    # --since first replays the container events the engine still holds.
    with streaming(nats_server, "events", "--since", "5m", "--json", "-H", "host-a") as replay:
        replay.wait_for("the watch to begin", lambda: "watching" in "".join(replay.stderr))
        past = [
            (e["container"] or {}).get("action")
            for e in replay.json_lines()
            if (e.get("container") or {}).get("id") == container_id
        ]
        assert past == ["create", "start"]
        assert replay.interrupt() == 0


# --- inspect and info ---------------------------------------------------------------------


def test_inspect_and_info(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    app_containers: dict[str, str],
    test_label: str,
) -> None:
    name = f"{test_label}-app"
    result, table, info, info_table = shoal_all(
        nats_server,
        ("inspect", name, "--json"),
        ("inspect", name, "-H", "host-b"),
        ("info", "--json"),
        ("info",),
    )
    assert result.code == 0, result.stderr
    for host, container_id in app_containers.items():
        reply = result.json()["replies"][host]
        assert reply["container"] == {
            "id": container_id,
            "name": name,
            "service": "",
            "state": "running",
        }
        assert reply["details"]["Id"] == container_id
        assert reply["details"]["Config"]["Labels"][TEST_LABEL] == test_label
        assert f"HOST_ID={host}" in reply["details"]["Config"]["Env"]
    assert table.stdout.splitlines()[0].split()[:3] == ["HOST", "CONTAINER", "ID"]
    row = table.stdout.splitlines()[1].split()
    assert row[:5] == ["host-b", app_containers["host-b"][:12], name, BUSYBOX_IMAGE, "running"]

    assert info.code == 0, info.stderr
    for host in HOSTS:
        engine = info.json()["replies"][host]
        assert engine["server_version"] and engine["api_version"]
        assert engine["cpus"] >= 1 and engine["memory_total"] > 0
        assert engine["containers_running"] >= 1
        assert engine["images"] >= 1
        assert engine["storage_driver"] and engine["docker_root_dir"]
    assert info_table.stdout.splitlines()[0].split()[:3] == ["HOST", "DOCKER", "API"]
    assert sorted(line.split()[0] for line in info_table.stdout.splitlines()[1:]) == HOSTS


# --- start, stop, restart, rm -------------------------------------------------------------


def state(engine: DockerEngine, container_id: str) -> str:
    with contextlib.closing(engine.client()) as client:
        return str(client.api.inspect_container(container_id)["State"]["Status"])


def test_container_actions_ask_first_and_respect_roles(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    keys: Keys,
    test_label: str,
) -> None:
    engine = engines[0]
    name = f"{test_label}-act"
    container_id = make_container(engine, test_label, name, ["sleep", "3600"])
    on_a = ("-H", "host-a")

    viewer, operator = str(keys.viewer.path), str(keys.operator.path)
    refused, as_viewer, as_operator = at_once(
        functools.partial(shoal, nats_server, "stop", name, *on_a),
        functools.partial(shoal, nats_server, "stop", name, "-y", *on_a, SHOAL_KEY=viewer),
        functools.partial(shoal, nats_server, "rm", name, "-fy", *on_a, SHOAL_KEY=operator),
    )
    assert refused.code == 2 and "refusing to stop containers without --yes" in refused.stderr
    assert as_viewer.code == 1 and "error host-a: forbidden" in as_viewer.stderr
    assert as_operator.code == 1 and "error host-a: forbidden" in as_operator.stderr
    assert state(engine, container_id) == "running"

    stopped = shoal(nats_server, "stop", name, "--yes", "--json", *on_a, SHOAL_KEY=operator)
    assert stopped.code == 0, stopped.stderr
    reply = stopped.json()["replies"]["host-a"]
    assert (reply["before"], reply["after"], reply["changed"]) == ("running", "exited", True)
    assert state(engine, container_id) == "exited"

    started = shoal(nats_server, "start", name, "--yes", *on_a)
    assert started.code == 0, started.stderr
    assert "running" in started.stdout and state(engine, container_id) == "running"

    restarted = shoal(nats_server, "restart", name, "--yes", "--json", "--time", "0", *on_a)
    assert restarted.code == 0, restarted.stderr
    assert restarted.json()["replies"]["host-a"]["after"] == "running"

    running = shoal(nats_server, "rm", name, "--yes", "--json", *on_a)
    assert running.code == 1 and running.json()["errors"]["host-a"]["code"] == "conflict"
    removed = shoal(nats_server, "rm", name, "-f", "--yes", "--json", *on_a)
    assert removed.code == 0, removed.stderr
    assert removed.json()["replies"]["host-a"]["after"] == "removed"
    with contextlib.closing(engine.client()) as client, pytest.raises(docker.errors.NotFound):
        client.containers.get(container_id)


COMPOSE = """
services:
  {name}:
    image: {image}
    network_mode: none
    labels:
      {label_key}: "{label}"
    deploy:
      update_config:
        monitor: 1s
"""


@pytest.fixture
def service(
    tmp_path: Path, test_label: str, engines: list[DockerEngine], app_images: dict[str, str]
) -> Iterator[tuple[str, Path]]:
    """A compose file for a service unique to the test; its containers removed afterwards."""
    name = f"svc-{test_label}"[:60].strip("-")
    path = tmp_path / "compose.yml"
    path.write_text(
        COMPOSE.format(name=name, image=app_images["v1"], label_key=TEST_LABEL, label=test_label)
    )
    yield name, path
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            for c in list_containers(client, {"label": f"shoal.service={name}"}):
                c.remove(force=True)


def service_states(nats_server: NatsServer, name: str) -> dict[str, str]:
    result = shoal(nats_server, "services", name, "--json", "-H", "host-a", "-H", "host-b")
    assert result.code == 0, result.stderr
    return {host: reply["services"][0]["state"] for host, reply in result.json()["replies"].items()}


def started_at(engines: list[DockerEngine], service: str) -> dict[str, str]:
    """When the service's container on host-a and host-b last started, from the engines."""
    times = {}
    for engine in engines[:2]:
        with contextlib.closing(engine.client()) as client:
            (container,) = client.containers.list(
                all=True, filters={"label": f"shoal.service={service}"}
            )
            times[engine.name] = str(container.attrs["State"]["StartedAt"])
    return times


def test_stopping_and_restarting_a_service_shows_in_services(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    service: tuple[str, Path],
) -> None:
    name, compose = service
    on = ("-H", "host-a", "-H", "host-b")
    deployed = shoal(nats_server, "deploy", "-f", str(compose), "--parallel", "100%", *on)
    assert deployed.code == 0, deployed.stderr

    stopped = shoal(nats_server, "stop", name, "--yes", "--json", "-H", "host-a")
    assert stopped.code == 0, stopped.stderr
    reply = stopped.json()["replies"]["host-a"]
    assert reply["container"]["service"] == name and reply["container"]["name"] == f"{name}.r1"
    assert service_states(nats_server, name) == {"host-a": "exited", "host-b": "running"}

    before = started_at(engines, name)
    started = shoal(nats_server, "start", name, "--yes", "--json", *on)
    assert started.code == 0, started.stderr
    changed = {h: r["changed"] for h, r in started.json()["replies"].items()}
    assert changed == {"host-a": True, "host-b": False}  # host-b's was running
    restarted = shoal(nats_server, "restart", name, "--yes", "--json", "-H", "host-b")
    assert restarted.code == 0, restarted.stderr
    assert service_states(nats_server, name) == {"host-a": "running", "host-b": "running"}
    after = started_at(engines, name)
    assert after["host-a"] != before["host-a"] and after["host-b"] != before["host-b"]


# --- metrics ------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def test_agent_serves_metrics_that_move_with_requests(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> None:
    port = free_port()
    agent = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id=f"m-{test_label}"[:64],
        docker_host=engines[1].host,
        extra=["--metrics-port", str(port)],
        trust=keys.trust,
    )
    agent.start()
    host = agent.host_id
    try:
        before = scrape(port)
        assert before[f'shoal_agent_info{{version="{agent_version}",host="{host}"}}'] == 1
        assert before["shoal_agent_nats_connected"] == 1
        assert before["shoal_agent_docker_reachable"] == 1
        assert before["shoal_agent_requests_in_flight"] == 0
        ps_ok = 'shoal_agent_requests_total{verb="ps",outcome="ok"}'
        seen = before.get(ps_ok, 0)

        for _ in range(2):
            assert shoal(nats_server, "ps", "-H", host).code == 0
        assert shoal(nats_server, "logs", "nothing-here", "-H", host).code == 1
        viewer = str(keys.viewer.path)
        assert shoal(nats_server, "stop", "x", "--yes", "-H", host, SHOAL_KEY=viewer).code == 1

        after = scrape(port)
        assert after[ps_ok] == seen + 2
        assert after['shoal_agent_requests_total{verb="logs",outcome="not_found"}'] == 1
        assert after['shoal_agent_requests_total{verb="stop",outcome="forbidden"}'] == 1
        count = 'shoal_agent_request_duration_seconds_count{verb="ps"}'
        assert after[count] == before.get(count, 0) + 2
        assert after['shoal_agent_request_duration_seconds_bucket{verb="ps",le="+Inf"}'] >= 2
        assert after['shoal_agent_request_duration_seconds_sum{verb="ps"}'] > 0

        nats_server.stop()
        nats_server.start()
        poll(
            "the agent to reconnect", lambda: scrape(port)["shoal_agent_nats_reconnects_total"] >= 1
        )
        assert scrape(port)["shoal_agent_nats_connected"] == 1
    finally:
        agent.stop()
        run_shoal("agents", "forget", host, server=nats_server.url)

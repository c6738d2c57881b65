"""Desired state that converges: ``shoal apply`` and ``shoal serve`` on real engines.

Agents of their own (labelled for this test only), the session's NATS server and
registry, and two ``shoal serve`` replicas as real processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agents import AgentProcess, _script, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine

COMPOSE = """
services:
  {name}:
    image: ${{IMAGE}}
    network_mode: none
    labels:
      {label_key}: "{label}"
    deploy:
      update_config:
        parallelism: 0
        monitor: 1s
"""


class Serve:
    """One ``shoal serve`` replica, stopped (or killed) by its pid."""

    def __init__(self, nats_server: NatsServer, name: str, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*_script("shoal"), "serve", "--name", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NATS_URL": nats_server.url},
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def status(nats_server: NatsServer, *names: str) -> dict[str, dict[str, Any]]:
    result = run_shoal("status", *names, "--json", server=nats_server.url)
    assert result.code in (0, 1, 4), result.stderr
    return {h["host"]: h for h in result.json()["hosts"]}


def states(nats_server: NatsServer, name: str) -> dict[str, str]:
    return {host: h["state"] for host, h in status(nats_server, name).items()}


@pytest.fixture
def fleet_of_three(
    nats_server: NatsServer,
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> Iterator[tuple[str, dict[str, AgentProcess]]]:
    role = f"r{abs(hash(test_label)) % 10**8}"
    agents = {}
    for index, engine in enumerate(engines):
        host = f"{role}-{index + 1}"
        agents[host] = AgentProcess(
            stack_dir / "agents",
            server=nats_server.url,
            host_id=host,
            docker_host=engine.host,
            labels={"role": role if index < 2 else "db"},
            trust=keys.trust,
        )
    try:
        for agent in agents.values():
            agent.start()
        yield role, agents
    finally:
        for agent in agents.values():
            agent.stop()
        for engine in engines:
            with contextlib.closing(engine.client()) as client:
                for c in list_containers(client, {"label": TEST_LABEL}):
                    if c.labels.get(TEST_LABEL) == test_label:
                        c.remove(force=True)
        for host in agents:
            run_shoal("agents", "forget", host, server=nats_server.url)


def service_containers(engine: DockerEngine, name: str) -> list[Any]:
    with contextlib.closing(engine.client()) as client:
        return list_containers(client, {"label": f"shoal.service={name}"})


def test_declared_services_converge_by_themselves(
    nats_server: NatsServer,
    engines: list[DockerEngine],
    app_images: dict[str, str],
    registry: Any,
    fleet_of_three: tuple[str, dict[str, AgentProcess]],
    stack_dir: Path,
    tmp_path: Path,
    test_label: str,
) -> None:
    role, agents = fleet_of_three
    web1, web2, db = sorted(agents)
    name = f"svc-{role}"
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE.format(name=name, label_key=TEST_LABEL, label=test_label))
    agents[web2].stop()  # offline while the service is declared

    applied = run_shoal(
        "apply", "-f", str(compose), "-l", f"role={role}", "--json",
        server=nats_server.url, IMAGE=app_images["v1"],
    )  # fmt: skip
    assert applied.code == 0, applied.stderr
    assert applied.json()["declarations"][0] == {
        "service": name,
        "generation": 1,
        "changed": True,
        "spec_hash": applied.json()["declarations"][0]["spec_hash"],
    }
    again = run_shoal(
        "apply", "-f", str(compose), "-l", f"role={role}", "--json",
        server=nats_server.url, IMAGE=app_images["v1"],
    )  # fmt: skip
    assert again.json()["declarations"][0]["changed"] is False

    replicas = [
        Serve(nats_server, f"serve-1-{role}", tmp_path / "serve-1.log"),
        Serve(nats_server, f"serve-2-{role}", tmp_path / "serve-2.log"),
    ]
    try:
        poll(
            "the online web host to converge and the offline one to be pending",
            lambda: states(nats_server, name) == {web1: "converged", web2: "pending"},
            60,
            context=lambda: "\n".join(r.text()[-2000:] for r in replicas),
            interval=0.5,
        )
        assert db not in status(nats_server, name)  # not selected
        assert len(service_containers(engines[2], name)) == 0

        # The offline host comes back: it converges with no further command.
        agents[web2].start()
        started = time.monotonic()
        poll(
            "the returning host to converge",
            lambda: states(nats_server, name).get(web2) == "converged",
            15,
            context=lambda: "\n".join(r.text()[-2000:] for r in replicas),
            interval=0.5,
        )
        assert time.monotonic() - started <= 15

        # A container removed by hand comes back.
        (container,) = service_containers(engines[0], name)
        container.remove(force=True)
        poll(
            "the removed container to come back",
            lambda: [c.status for c in service_containers(engines[0], name)] == ["running"],
            30,
        )

        # The leader dies: the other replica takes over, and keeps converging.
        leader = next(r for r in replicas if "holds the reconciler lease" in r.text())
        standby = next(r for r in replicas if r is not leader)
        leader.kill()
        poll(
            "the standby replica to take the lease",
            lambda: "holds the reconciler lease" in standby.text(),
            20,
        )
        (container,) = service_containers(engines[1], name)
        container.stop(timeout=0)
        poll(
            "the stopped container to run again under the new leader",
            lambda: any(c.status == "running" for c in service_containers(engines[1], name)),
            30,
            context=standby.text,
        )

        # A declaration whose image does not exist fails on every host, backed off.
        bad = tmp_path / "bad" / "compose.yaml"
        bad.parent.mkdir()
        bad_name = f"bad-{role}"
        bad.write_text(COMPOSE.format(name=bad_name, label_key=TEST_LABEL, label=test_label))
        missing = registry.ref("shoal-test/no-such-image", "v1")
        assert run_shoal(
            "apply", "-f", str(bad), "-l", f"role={role}",
            server=nats_server.url, IMAGE=missing,
        ).code == 0  # fmt: skip
        poll(
            "the bad declaration to fail on both hosts",
            lambda: set(states(nats_server, bad_name).values()) == {"failed"},
            60,
            context=standby.text,
        )
        failed = status(nats_server, bad_name)
        for host in (web1, web2):
            assert failed[host]["next_try"] is not None
            assert failed[host]["reason"]
        first_attempts = standby.text().count(f"{bad_name} on {web1}: failed")
        time.sleep(4)  # a window in which a looping reconciler would retry many times
        later = standby.text().count(f"{bad_name} on {web1}: failed")
        assert later - first_attempts <= 1  # backed off: at most one retry in the window
        exit_code = run_shoal("status", bad_name, server=nats_server.url).code
        assert exit_code == 1

        # A new host with the role joins and converges.
        joined = AgentProcess(
            stack_dir / "agents",
            server=nats_server.url,
            host_id=f"{role}-new",
            docker_host=engines[2].host,
            labels={"role": role},
            trust=fleet_of_three[1][web1].trust,
        )
        agents[joined.host_id] = joined
        joined.start()
        poll(
            "the new host to converge",
            lambda: states(nats_server, name).get(joined.host_id) == "converged",
            30,
            context=standby.text,
        )

        # Withdrawn: hosts remove the service.
        assert run_shoal("apply", "--delete", name, server=nats_server.url).code == 0
        assert run_shoal("apply", "--delete", bad_name, server=nats_server.url).code == 0
        poll(
            "the withdrawn service to be removed everywhere",
            lambda: all(not service_containers(e, name) for e in engines),
            60,
            context=standby.text,
        )
    finally:
        for replica in replicas:
            replica.stop()
        for service in (name, f"bad-{role}"):
            run_shoal("apply", "--delete", service, server=nats_server.url)

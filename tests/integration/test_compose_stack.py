"""A compose stack with a project network and a secret, deployed on three real engines.

No traffic is sent between containers (container addresses are private-range on these
machines): attachments and aliases are checked by inspecting the containers.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.stack import TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine
HOSTS = ["host-a", "host-b", "host-c"]

COMPOSE = """
name: {project}
services:
  {db}:
    image: ${{IMAGE}}
    labels:
      {label_key}: "{label}"
    networks:
      back:
        aliases: [database]
    secrets:
      - source: db_password
        mode: 0440
    configs:
      - source: settings
        target: /etc/app/settings.ini
    deploy:
      update_config:
        parallelism: 0
        monitor: 1s
  {web}:
    image: ${{IMAGE}}
    container_name: {web}-main
    labels:
      {label_key}: "{label}"
    depends_on: [{db}]
    expose: ["8080"]
    networks: [default, back]
    tmpfs: [/scratch]
    read_only: true
    init: true
    extra_hosts: ["registry.internal:198.18.255.1"]
    ulimits:
      nofile: {{soft: 1024, hard: 2048}}
    logging:
      driver: json-file
      options: {{max-size: 1m, max-file: "2"}}
    deploy:
      update_config:
        parallelism: 0
        monitor: 1s
networks:
  back:
    internal: true
secrets:
  db_password:
    file: ./db_password.txt
configs:
  settings:
    content: |
      [app]
      level = debug
"""


@pytest.fixture
def stack(tmp_path: Path, test_label: str, engines: list[DockerEngine]) -> Iterator[dict[str, str]]:
    """A compose project unique to the test; its containers and networks removed after."""
    project = f"stk{uuid.uuid4().hex[:8]}"
    names = {"project": project, "db": f"{project}-db", "web": f"{project}-web"}
    folder = tmp_path / project
    folder.mkdir()
    secret = f"pw-{uuid.uuid4().hex}"
    (folder / "db_password.txt").write_text(secret)
    compose = folder / "compose.yaml"
    compose.write_text(COMPOSE.format(label_key=TEST_LABEL, label=test_label, **names))
    yield {**names, "compose": str(compose), "secret": secret}
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            for service in (names["db"], names["web"]):
                for c in client.containers.list(
                    all=True, filters={"label": f"shoal.service={service}"}
                ):
                    c.remove(force=True)
            for network in client.networks.list(names=[f"{project}_default", f"{project}_back"]):
                network.remove()


def deploy(nats_server: NatsServer, stack: dict[str, str], image: str, *args: str) -> CliResult:
    return run_shoal("deploy", "-f", stack["compose"], *args, server=nats_server.url, IMAGE=image)


def test_a_stack_with_a_network_and_a_secret(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    app_images: dict[str, str],
    stack: dict[str, str],
) -> None:
    project, db, web, secret = stack["project"], stack["db"], stack["web"], stack["secret"]
    result = deploy(nats_server, stack, app_images["v1"], "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    rollouts = {r["service"]: r["rollout"] for r in doc["rollouts"]}
    assert [r["service"] for r in doc["rollouts"]] == [db, web]  # depends_on order
    for service in (db, web):
        assert rollouts[service]["verdict"] == "completed"
        assert rollouts[service]["hosts"] == dict.fromkeys(HOSTS, "created")
    outputs = [result.stdout, result.stderr]

    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            (db_container,) = client.containers.list(filters={"label": f"shoal.service={db}"})
            web_container = client.containers.get(f"{web}-main")
            assert web_container.labels["shoal.revision"] == "1"

            db_nets = db_container.attrs["NetworkSettings"]["Networks"]
            assert set(db_nets) == {f"{project}_back"}
            assert {db, "database"} <= set(db_nets[f"{project}_back"]["Aliases"])
            web_nets = web_container.attrs["NetworkSettings"]["Networks"]
            assert set(web_nets) == {f"{project}_default", f"{project}_back"}
            for network in web_nets.values():
                assert web in network["Aliases"]
            back = client.networks.get(f"{project}_back")
            assert back.attrs["Internal"] is True
            assert back.attrs["Labels"]["shoal.network"] == "1"

            mode = db_container.exec_run(["stat", "-c", "%a", "/run/secrets/db_password"])
            assert mode.exit_code == 0 and mode.output.decode().strip() == "440"
            value = db_container.exec_run(["cat", "/run/secrets/db_password"])
            assert value.output.decode() == secret
            settings = db_container.exec_run(["cat", "/etc/app/settings.ini"])
            assert settings.output.decode() == "[app]\nlevel = debug\n"

            host_config = web_container.attrs["HostConfig"]
            assert host_config["ReadonlyRootfs"] is True and host_config["Init"] is True
            assert "/scratch" in host_config["Tmpfs"]
            assert host_config["ExtraHosts"] == ["registry.internal:198.18.255.1"]
            assert host_config["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
            assert host_config["LogConfig"] == {
                "Type": "json-file",
                "Config": {"max-size": "1m", "max-file": "2"},
            }
            assert "8080/tcp" in web_container.attrs["Config"]["ExposedPorts"]

    again = deploy(nats_server, stack, app_images["v1"], "--json")
    assert again.code == 0, again.stderr
    assert {r["service"]: r["rollout"]["hosts"] for r in again.json()["rollouts"]} == {
        db: dict.fromkeys(HOSTS, "unchanged"),
        web: dict.fromkeys(HOSTS, "unchanged"),
    }
    outputs += [again.stdout, again.stderr]

    # A new value is a spec change: the service is redeployed; the value shows nowhere.
    new_secret = f"pw-{uuid.uuid4().hex}"
    Path(stack["compose"]).with_name("db_password.txt").write_text(new_secret)
    changed = deploy(nats_server, stack, app_images["v1"], "--jsonl")
    assert changed.code == 0, changed.stderr
    finished = [
        json.loads(line)
        for line in changed.stdout.splitlines()
        if line.strip() and json.loads(line)["event"] == "host_finished"
    ]
    db_updates = [e for e in finished if e["service"] == db]
    assert {e["outcome"] for e in db_updates} == {"updated"}
    assert all("secret:db_password: value changed" in e["result"]["diff"] for e in db_updates)
    outputs += [changed.stdout, changed.stderr]
    with contextlib.closing(engines[0].client()) as client:
        (db_container,) = client.containers.list(filters={"label": f"shoal.service={db}"})
        value = db_container.exec_run(["cat", "/run/secrets/db_password"])
        assert value.output.decode() == new_secret

    # Prune keeps the networks the services use, even with their containers stopped.
    with contextlib.closing(engines[0].client()) as client:
        client.containers.get(f"{web}-main").stop(timeout=0)
    pruned = run_shoal("prune", "networks", "--yes", "--json", server=nats_server.url)
    assert pruned.code == 0, pruned.stderr
    with contextlib.closing(engines[0].client()) as client:
        names = {n.name for n in client.networks.list()}
    assert {f"{project}_default", f"{project}_back"} <= names

    audit = run_shoal("audit", "--json", server=nats_server.url)
    assert audit.code == 0, audit.stderr
    assert any(r.get("verb") == "deploy" for r in audit.json()["records"])
    outputs += [audit.stdout]
    for agent in agents.values():
        outputs.append(agent.log_path.read_text(errors="replace"))
    for text in outputs:
        assert secret not in text and new_secret not in text


TASKS = """
name: {project}
services:
  {migrate}:
    image: ${{IMAGE}}
    command: ["sh", "-c", "echo migrated"]
    network_mode: none
    labels:
      {label_key}: "{label}"
  {app}:
    image: ${{IMAGE}}
    network_mode: none
    labels:
      {label_key}: "{label}"
    secrets: [api_token]
    depends_on:
      {migrate}:
        condition: service_completed_successfully
  {odd}:
    image: ${{IMAGE}}
    network_mode: none
    platform: linux/riscv64
    profiles: [odd]
secrets:
  api_token:
    external: true
    name: {token}
"""


def test_external_secrets_tasks_and_platforms(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    app_images: dict[str, str],
    tmp_path: Path,
    test_label: str,
) -> None:
    project = f"tsk{uuid.uuid4().hex[:8]}"
    names = {
        "project": project,
        "migrate": f"{project}-migrate",
        "app": f"{project}-app",
        "odd": f"{project}-odd",
        "token": f"{project}-token",
    }
    compose = tmp_path / "compose.yaml"
    compose.write_text(TASKS.format(label_key=TEST_LABEL, label=test_label, **names))
    value = f"tok-{uuid.uuid4().hex}"
    source = tmp_path / "token.txt"
    source.write_text(value)
    outputs: list[str] = []
    try:
        stored = run_shoal(
            "secret", "set", names["token"], "--from-file", str(source), "-H", "host-a",
            "--json", server=nats_server.url,
        )  # fmt: skip
        assert stored.code == 0, stored.stderr
        assert stored.json()["replies"]["host-a"] == {
            "name": names["token"],
            "action": "set",
            "changed": True,
        }
        listed = run_shoal("secret", "ls", "-H", "host-a", "--json", server=nats_server.url)
        assert names["token"] in listed.json()["replies"]["host-a"]["secrets"]

        # host-b lacks the secret: the app fails there, naming the command that fixes it.
        result = run_shoal(
            "deploy", "-f", str(compose), "--json", "-H", "host-a", "-H", "host-b",
            server=nats_server.url, IMAGE=app_images["v1"],
        )  # fmt: skip
        outputs += [stored.stdout, stored.stderr, result.stdout, result.stderr]
        doc = result.json()
        rollouts = {r["rollout"]["service"]: r for r in doc["rollouts"]}
        assert rollouts[names["migrate"]]["rollout"]["hosts"] == {
            "host-a": "created",
            "host-b": "created",
        }
        app = rollouts[names["app"]]
        assert app["rollout"]["hosts"]["host-a"] == "created"
        assert app["rollout"]["hosts"]["host-b"] == "failed"
        assert "shoal secret set" in app["errors"]["host-b"]["message"]
        assert names["odd"] not in rollouts  # its profile is not active

        with contextlib.closing(engines[0].client()) as client:
            (task,) = client.containers.list(
                all=True, filters={"label": f"shoal.service={names['migrate']}"}
            )
            assert task.attrs["State"]["Status"] == "exited"
            assert task.attrs["State"]["ExitCode"] == 0
            (running,) = client.containers.list(filters={"label": f"shoal.service={names['app']}"})
            read = running.exec_run(["cat", "/run/secrets/api_token"])
            assert read.output.decode() == value

        odd = run_shoal(
            "deploy", "-f", str(compose), names["odd"], "--json", "-H", "host-a",
            server=nats_server.url, IMAGE=app_images["v1"],
        )  # fmt: skip
        assert odd.code == 1
        error = odd.json()["errors"]["host-a"]
        assert "platform linux/riscv64" in error["message"]
        assert error["detail"]["reason"] == "platform mismatch"

        removed = run_shoal(
            "secret", "rm", names["token"], "-H", "host-a", "--json", server=nats_server.url
        )
        assert removed.json()["replies"]["host-a"]["changed"] is True
        outputs += [odd.stdout, removed.stdout]
        outputs += [a.log_path.read_text(errors="replace") for a in agents.values()]
        assert not any(value in text for text in outputs)
    finally:
        for engine in engines:
            with contextlib.closing(engine.client()) as client:
                for c in list_containers(client, {"label": TEST_LABEL}):
                    if c.labels.get(TEST_LABEL) == test_label:
                        c.remove(force=True)

"""Signed requests, roles, replays and the audit trail, against real agents and engines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

from shoal.protocol import Reply, Request, Role, Signer, Subjects, Target, utcnow
from tests.integration.agents import AgentProcess, SessionKey, run_shoal, write_trust
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer

pytestmark = pytest.mark.engine
SUBJECTS = Subjects()


def document(
    host: str, verb: str, args: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    request = Request(verb=verb, args=args or {}, target=Target(host=host), sender="test", **fields)
    return request.model_dump(mode="json", exclude={"sig"})


def signed(key: SessionKey | Signer, doc: dict[str, Any]) -> bytes:
    signer = key.signer if isinstance(key, SessionKey) else key
    return json.dumps(signer.sign_document(doc)).encode()


async def _ask(url: str, subject: str, data: bytes) -> Reply:
    """Send one request and return the final reply, skipping progress messages."""
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(subject, data, reply=inbox)
        async with asyncio.timeout(10):
            while True:
                msg = await sub.next_msg(timeout=10)
                if json.loads(msg.data).get("kind") == "reply":
                    return Reply.model_validate_json(msg.data)
    finally:
        await nc.close()


def ask(nats_server: NatsServer, host: str, verb: str, data: bytes) -> Reply:
    return asyncio.run(_ask(nats_server.url, SUBJECTS.host(host, verb), data))


def code_of(reply: Reply) -> str | None:
    return None if reply.ok else str(reply.error.code) if reply.error else "?"


@pytest.fixture
def exited(engines: list[DockerEngine], test_label: str) -> str:
    """A stopped container on host-a that a prune would remove."""
    with contextlib.closing(engines[0].client()) as client:
        container = client.containers.create(
            BUSYBOX_IMAGE,
            ["true"],
            name=f"{test_label}-exited",
            labels={TEST_LABEL: test_label},
            network_mode="none",
        )
        return str(container.id)


def still_there(engine: DockerEngine, container_id: str) -> bool:
    with contextlib.closing(engine.client()) as client:
        return any(c.id == container_id for c in client.containers.list(all=True))


def prune_args(label: str, *kinds: str) -> dict[str, Any]:
    return {"kinds": list(kinds or ("containers",)), "labels": [f"{TEST_LABEL}={label}"]}


def audit_records(nats_server: NatsServer, host: str) -> list[dict[str, Any]]:
    result = run_shoal("audit", "-H", host, "--json", server=nats_server.url)
    assert result.code == 0, result.stderr
    return list(result.json()["records"])


def test_refusals_are_typed_audited_and_change_nothing(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    keys: Keys,
    exited: str,
    test_label: str,
) -> None:
    host = "host-a"
    args = prune_args(test_label)
    cases: dict[str, tuple[bytes, str]] = {}

    unsigned = document(host, "prune", args)
    cases["unsigned"] = (json.dumps(unsigned).encode(), "unauthorized")

    tampered = keys.admin.signer.sign_document(document(host, "prune", args))
    tampered["args"] = prune_args(test_label, "containers", "images")
    cases["tampered"] = (json.dumps(tampered).encode(), "unauthorized")

    cases["stranger"] = (signed(keys.stranger, document(host, "prune", args)), "unauthorized")

    old = document(host, "prune", args, issued_at=utcnow() - timedelta(hours=2), ttl=60)
    cases["expired"] = (signed(keys.admin, old), "expired")

    future = document(host, "prune", args, issued_at=utcnow() + timedelta(hours=2))
    cases["future"] = (signed(keys.admin, future), "expired")

    cases["viewer"] = (signed(keys.viewer, document(host, "prune", args)), "forbidden")
    volumes = document(host, "prune", prune_args(test_label, "volumes"))
    cases["operator-volumes"] = (signed(keys.operator, volumes), "forbidden")

    for other in ("host-b",):
        retargeted = signed(keys.admin, document(other, "prune", args))
        cases["retargeted"] = (retargeted, "bad_request")  # signed for B, sent to A
    moved = keys.admin.signer.sign_document(document("host-b", "prune", args))
    moved["target"] = {"host": host}  # re-addressed to A: the signature no longer holds
    cases["moved"] = (json.dumps(moved).encode(), "unauthorized")

    ids = {}
    for name, (data, expected) in cases.items():
        reply = ask(nats_server, host, "prune", data)
        assert code_of(reply) == expected, (name, reply.error)
        ids[name] = json.loads(data).get("id")
        assert still_there(engines[0], exited), f"{name} removed a container"

    records = {r["request_id"]: r for r in audit_records(nats_server, host)}
    for name, request_id in ids.items():
        record = records[request_id]
        assert record["decision"] == "refused", name
        assert record["code"] == cases[name][1], name
    viewer = records[ids["viewer"]]
    assert (viewer["signer"], viewer["key"]) == ("viewer", keys.viewer.signer.public_key)
    assert records[ids["stranger"]]["key"] == keys.stranger.signer.public_key
    assert records[ids["stranger"]]["signer"] is None


def test_roles_bound_the_verbs(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    keys: Keys,
    exited: str,
    test_label: str,
) -> None:
    host = "host-a"
    for key in (keys.viewer, keys.operator, keys.admin):
        assert ask(nats_server, host, "ps", signed(key, document(host, "ps"))).ok, key.name

    via_cli = run_shoal(
        "ps", "--json", "-H", host, server=nats_server.url, SHOAL_KEY=str(keys.viewer.path)
    )
    assert via_cli.code == 0, via_cli.stderr
    viewer_prune = run_shoal(
        "prune",
        "containers",
        "--yes",
        "--json",
        "-H",
        host,
        "--filter",
        f"label={TEST_LABEL}={test_label}",
        server=nats_server.url,
        SHOAL_KEY=str(keys.viewer.path),
    )
    assert viewer_prune.code == 1
    assert viewer_prune.json()["errors"][host]["code"] == "forbidden"
    assert still_there(engines[0], exited)

    operator_volumes = ask(
        nats_server,
        host,
        "prune",
        signed(keys.operator, document(host, "prune", prune_args(test_label, "volumes"))),
    )
    assert code_of(operator_volumes) == "forbidden"
    admin_volumes = ask(
        nats_server,
        host,
        "prune",
        signed(
            keys.admin,
            document(host, "prune", {**prune_args(test_label, "volumes"), "dry_run": True}),
        ),
    )
    assert admin_volumes.ok, admin_volumes.error

    operator_prune = ask(
        nats_server,
        host,
        "prune",
        signed(keys.operator, document(host, "prune", prune_args(test_label))),
    )
    assert operator_prune.ok, operator_prune.error
    assert not still_there(engines[0], exited)
    record = next(
        r for r in audit_records(nats_server, host) if r["request_id"] == operator_prune.id
    )
    assert (record["decision"], record["outcome"], record["signer"], record["role"]) == (
        "accepted",
        "ok",
        "operator",
        "operator",
    )
    assert record["key"] == keys.operator.signer.public_key


def test_a_request_runs_at_most_once_and_status_tells_its_outcome(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    keys: Keys,
    exited: str,
    test_label: str,
) -> None:
    host = "host-a"
    data = signed(keys.admin, document(host, "prune", prune_args(test_label)))
    first = ask(nats_server, host, "prune", data)
    assert first.ok and first.result is not None
    assert exited in {c["id"] for c in first.result["kinds"]["containers"]["removed"]}
    again = ask(nats_server, host, "prune", data)
    assert code_of(again) == "replayed"
    assert again.error is not None and again.error.detail["state"] == "finished"

    status = ask(
        nats_server,
        host,
        "status",
        signed(keys.viewer, document(host, "status", {"request_id": first.id})),
    )
    assert status.ok and status.result is not None
    assert (status.result["state"], status.result["ok"], status.result["verb"]) == (
        "finished",
        True,
        "prune",
    )
    unknown = ask(
        nats_server,
        host,
        "status",
        signed(keys.viewer, document(host, "status", {"request_id": "0" * 32})),
    )
    assert unknown.result is not None and unknown.result["state"] == "unknown"


@pytest.fixture
def own_agent(
    nats_server: NatsServer,
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> Iterator[AgentProcess]:
    """An agent with its own trust file and state directory, that tests may restart."""
    workdir = stack_dir / f"own-{test_label}"
    workdir.mkdir(parents=True)
    trust = write_trust(workdir / "trust.toml", [(keys.admin, Role.ADMIN)])
    agent = AgentProcess(
        workdir,
        server=nats_server.url,
        host_id=f"own-{test_label}"[:64],
        docker_host=engines[0].host,
        trust=trust,
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        run_shoal("agents", "forget", agent.host_id, server=nats_server.url)


def test_replay_is_refused_after_an_agent_restart(
    nats_server: NatsServer,
    own_agent: AgentProcess,
    keys: Keys,
    test_label: str,
) -> None:
    host = own_agent.host_id
    data = signed(keys.admin, document(host, "prune", {**prune_args(test_label), "dry_run": True}))
    assert ask(nats_server, host, "prune", data).ok
    assert own_agent.stop() == 0
    own_agent.start()
    again = ask(nats_server, host, "prune", data)
    assert code_of(again) == "replayed", again.error
    assert again.error is not None and again.error.detail["state"] == "finished"


def test_trust_reloads_on_change_and_on_sighup(
    nats_server: NatsServer,
    own_agent: AgentProcess,
    keys: Keys,
) -> None:
    host = own_agent.host_id
    assert own_agent.trust is not None

    def operator_ps() -> Reply:
        return ask(nats_server, host, "ps", signed(keys.operator, document(host, "ps")))

    assert code_of(operator_ps()) == "unauthorized"
    write_trust(own_agent.trust, [(keys.admin, Role.ADMIN), (keys.operator, Role.OPERATOR)])
    poll("the agent to pick up the new trust file", lambda: operator_ps().ok)

    # Revoke by rewriting and signalling at once.
    write_trust(own_agent.trust, [(keys.admin, Role.ADMIN)])
    assert own_agent.process is not None
    own_agent.process.send_signal(signal.SIGHUP)
    poll("the revocation to take effect", lambda: code_of(operator_ps()) == "unauthorized")

    # A broken file keeps the previous trust in force.
    own_agent.trust.write_text("[[trust]]\nname = 'x'\nkey = 'not a key'\nrole = 'admin'\n")
    own_agent.process.send_signal(signal.SIGHUP)
    assert ask(nats_server, host, "ps", signed(keys.admin, document(host, "ps"))).ok
    assert (
        "keeping the previous trust" in own_agent.log()
        or poll(
            "the agent to log the broken trust file",
            lambda: "keeping the previous trust" in own_agent.log(),
            deadline=5,
        )
        is None
    )


def test_an_agent_without_trust_refuses_to_start(
    stack_dir: Path, engines: list[DockerEngine]
) -> None:
    agent = AgentProcess(
        stack_dir / "no-trust",
        server="nats://127.0.0.1:1",
        host_id="no-trust",
        docker_host=engines[0].host,
        extra=[],
    )
    argv = [a for a in agent.argv() if a != "--insecure"]

    completed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert completed.returncode == 2
    assert "--trust" in completed.stderr and "--insecure" in completed.stderr


def test_an_insecure_agent_says_so_in_its_facts_and_log(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    stack_dir: Path,
    test_label: str,
) -> None:
    agent = AgentProcess(
        stack_dir / "insecure",
        server=nats_server.url,
        host_id=f"insecure-{test_label}"[:64],
        docker_host=engines[0].host,
    )
    agent.start()
    try:
        assert "INSECURE MODE" in agent.log()
        poll(
            "the insecure agent in the inventory",
            lambda: any(
                a["host_id"] == agent.host_id
                for a in run_shoal("agents", "--json", server=nats_server.url).json()["agents"]
            ),
        )
        record = next(
            a
            for a in run_shoal("agents", "--json", server=nats_server.url).json()["agents"]
            if a["host_id"] == agent.host_id
        )
        assert record["facts"]["insecure"] is True
        table = run_shoal("agents", server=nats_server.url)
        assert "INSECURE" in table.stdout
    finally:
        agent.stop()
        run_shoal("agents", "forget", agent.host_id, server=nats_server.url)


def test_keys_and_enroll_commands(nats_server: NatsServer, stack_dir: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(stack_dir / "keys-cli")}
    created = run_shoal("keys", "new", "alice", "--json", server=nats_server.url, **env)
    assert created.code == 0, created.stderr
    info = created.json()
    assert info["name"] == "alice" and info["public_key"].startswith("U")
    path = Path(info["path"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Signer(path.read_bytes()).public_key == info["public_key"]
    assert run_shoal("keys", "new", "alice", server=nats_server.url, **env).code == 2
    run_shoal("keys", "new", "bob", server=nats_server.url, **env)
    listed = run_shoal("keys", "list", "--json", server=nats_server.url, **env).json()["keys"]
    assert [(k["name"], k["default"]) for k in listed] == [("alice", True), ("bob", False)]

    enrolled = run_shoal(
        "enroll", "pi-7", "--role", "operator", "--json", server=nats_server.url, **env
    )
    assert enrolled.code == 0, enrolled.stderr
    doc = enrolled.json()
    trust = tomllib.loads(doc["trust_toml"])["trust"]
    assert trust == [{"name": "alice", "key": info["public_key"], "role": "operator"}]
    user = json.loads(doc["nats_user"].split("\n", 1)[1])
    assert user["nkey"] == doc["nats_public_key"]
    assert "shoal.host.pi-7.*" in user["permissions"]["subscribe"]["allow"]
    assert Signer(doc["nats_seed"]).public_key == doc["nats_public_key"]
    assert run_shoal("enroll", "bad.host", server=nats_server.url, **env).code == 2
    os.environ.get("PATH")  # keep the environment untouched

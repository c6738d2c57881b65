"""``shoal exec`` and ``shoal run`` across real engines: output, exit codes, timeouts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.integration.conftest import Keys
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine


@pytest.fixture
def boxes(engines: list[DockerEngine], test_label: str) -> Iterator[str]:
    """A running container of the same name on each engine; host-b's fails its command."""
    name = f"box-{test_label}"[:60].strip("-")
    for index, engine in enumerate(engines):
        with contextlib.closing(engine.client()) as client:
            client.containers.run(
                BUSYBOX_IMAGE,
                ["sleep", "3600"],
                name=name,
                network_mode="none",
                labels={TEST_LABEL: test_label},
                environment={"FAIL": "3" if index == 1 else "0"},
                init=True,
                detach=True,
            )
    yield name
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            for c in list_containers(client, {"label": TEST_LABEL}):
                if c.labels.get(TEST_LABEL) == test_label:
                    c.remove(force=True)


def shoal(nats_server: NatsServer, *args: str, **env: str) -> CliResult:
    return run_shoal(*args, server=nats_server.url, timeout=120, **env)


def test_exec_reports_every_hosts_exit_and_a_silent_host(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    boxes: str,
    stack_dir: Path,
    keys: Keys,
    test_label: str,
) -> None:
    down = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id=f"down-{test_label}"[:60],
        docker_host=engines[2].host,
        trust=keys.trust,
    )
    down.start()
    down.stop()  # known, and offline
    try:
        script = 'echo "out $FAIL"; echo "err $FAIL" >&2; exit $FAIL'
        result = shoal(
            nats_server, "exec", "-H", "host-a", "-H", "host-b", "-H", down.host_id,
            boxes, "--json", "--", "sh", "-c", script,
        )  # fmt: skip
        assert result.code == 4, result.stderr
        doc = result.json()
        assert doc["missing"] == [down.host_id]
        a, b = doc["replies"]["host-a"], doc["replies"]["host-b"]
        assert (a["exit_code"], a["stdout"], a["stderr"]) == (0, "out 0\n", "err 0\n")
        assert (b["exit_code"], b["stdout"], b["stderr"]) == (3, "out 3\n", "err 3\n")
        assert a["container"]["name"] == boxes and a["timed_out"] is False

        streamed = shoal(
            nats_server, "exec", "-H", "host-a", "-H", "host-b", boxes, "--", "sh", "-c", script
        )
        assert streamed.code == 1
        assert "host-a | out 0" in streamed.stdout and "host-b | out 3" in streamed.stdout
        assert "host-b | err 3" in streamed.stderr and "out 3" not in streamed.stderr
    finally:
        run_shoal("agents", "forget", down.host_id, server=nats_server.url)


def test_exec_timeout_large_output_and_roles(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    boxes: str,
    keys: Keys,
) -> None:
    killed = shoal(
        nats_server, "exec", "-H", "host-a", boxes, "--timeout", "1", "--json",
        "--", "sh", "-c", "echo started; exec sleep 300",
    )  # fmt: skip
    assert killed.code == 1, killed.stderr
    reply = killed.json()["replies"]["host-a"]
    assert reply["timed_out"] is True and reply["exit_code"] is None
    assert reply["stdout"] == "started\n" and reply["duration"] < 15
    with contextlib.closing(engines[0].client()) as client:
        top = client.containers.get(boxes).top()
    assert not any("sleep 300" in " ".join(p) for p in top["Processes"])

    size = 1_500_000  # more than one NATS message (1 MiB)
    big = shoal(
        nats_server, "exec", "-H", "host-a", boxes, "--jsonl",
        "--", "sh", "-c", f"yes aaaaaaaaa | head -c {size}",
    )  # fmt: skip
    assert big.code == 0, big.stderr
    events = [json.loads(line) for line in big.stdout.splitlines()]
    text = "".join(e["text"] for e in events if e["event"] == "output")
    expected = "aaaaaaaaa\n" * (size // 10)
    assert text == expected
    assert events[-1]["event"] == "result" and events[-1]["exit_code"] == 0
    whole = shoal(
        nats_server, "exec", "-H", "host-a", boxes, "--json",
        "--", "sh", "-c", f"yes aaaaaaaaa | head -c {size}",
    )  # fmt: skip
    assert whole.json()["replies"]["host-a"]["stdout"] == expected

    viewer = shoal(
        nats_server, "exec", "-H", "host-a", boxes, "--json", "--", "true",
        SHOAL_KEY=str(keys.viewer.path),
    )  # fmt: skip
    assert viewer.code == 1
    assert viewer.json()["errors"]["host-a"]["code"] == "forbidden"


def test_run_leaves_nothing_behind(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
) -> None:
    before = []
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            before.append({c.id for c in client.containers.list(all=True)})
    result = shoal(nats_server, "run", BUSYBOX_IMAGE, "--json", "--", "sh", "-c", "echo hi; exit 2")
    assert result.code == 1, result.stderr
    replies = result.json()["replies"]
    assert sorted(replies) == ["host-a", "host-b", "host-c"]
    assert all((r["exit_code"], r["stdout"]) == (2, "hi\n") for r in replies.values())
    for engine, ids in zip(engines, before, strict=True):
        with contextlib.closing(engine.client()) as client:
            assert {c.id for c in client.containers.list(all=True)} == ids
            assert client.containers.list(all=True, filters={"label": "shoal.run"}) == []
    hosty = shoal(nats_server, "run", BUSYBOX_IMAGE, "--network", "host", "--json", "--", "true")
    assert hosty.code == 1
    assert {e["code"] for e in hosty.json()["errors"].values()} == {"policy_denied"}


def test_agents_upgrade_needs_the_admin_role_and_an_agent_that_can_replace_itself(
    nats_server: NatsServer, agents: dict[str, AgentProcess], keys: Keys
) -> None:
    host = sorted(agents)[0]
    upgrade = ("agents", "upgrade", "-H", host, "--version", "9.9.9", "--yes", "--json")
    refused = shoal(nats_server, *upgrade, SHOAL_KEY=str(keys.operator.path))
    assert refused.code == 1, refused.stderr
    (outcome,) = refused.json()["hosts"]
    assert outcome["outcome"] == "failed" and outcome["reason"].startswith("forbidden"), outcome

    # An agent running as a process outside the versioned venvs of the systemd layout
    # (here: the test's own venv) has nothing to upgrade itself with, and says so.
    process = shoal(nats_server, *upgrade)
    assert process.code == 1, process.stderr
    (outcome,) = process.json()["hosts"]
    assert outcome["outcome"] == "failed", outcome
    assert outcome["reason"].startswith("bad_request"), outcome
    assert "not from a venv under" in outcome["reason"], outcome

    # Without --yes and without a terminal, nothing is sent.
    unconfirmed = shoal(nats_server, "agents", "upgrade", "-H", host, "--version", "9.9.9")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.stderr

"""``shoal deploy --dry-run`` accepts the public compose files of tests/data/compose_corpus.

One agent, on a real engine, with a policy that allows every privilege the files ask for
(the default policy refuses them, which is the host's decision, not the file's): every
service of every file is planned as a new service, and nothing is created.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agents import AgentProcess, run_shoal
from tests.integration.conftest import Keys
from tests.stack import DockerEngine, NatsServer
from tests.unit.test_compose_corpus import ACCEPTED, CORPUS

pytestmark = pytest.mark.engine

PERMISSIVE = """
[containers]
privileged = true
host_network = true
host_pid = true
host_ipc = true
share_namespaces = true
devices = ["/dev/*"]
capabilities = ["NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW", "CHOWN", "DAC_OVERRIDE",
                "SETUID", "SETGID", "SYS_ADMIN", "SYS_PTRACE", "SYS_NICE", "IPC_LOCK",
                "SYS_RESOURCE", "SYS_TIME", "FOWNER", "KILL", "MKNOD", "AUDIT_WRITE",
                "SYS_MODULE", "SETPCAP", "NET_BROADCAST", "SYSLOG", "BPF", "PERFMON"]
security_opt = ["*"]
bind_mounts = ["/", "/*"]
volume_types = ["none", "nfs"]
"""


@pytest.fixture
def corpus_agent(
    nats_server: NatsServer, engines: list[DockerEngine], stack_dir: Path, keys: Keys
) -> Iterator[AgentProcess]:
    policy = stack_dir / "corpus-policy.toml"
    policy.write_text(PERMISSIVE)
    agent = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id="corpus-host",
        docker_host=engines[2].host,
        extra=["--policy", str(policy)],
        trust=keys.trust,
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def test_every_corpus_file_is_planned_by_a_dry_run(
    nats_server: NatsServer, corpus_agent: AgentProcess, engines: list[DockerEngine]
) -> None:
    with contextlib.closing(engines[2].client()) as client:
        before = {c.id for c in client.containers.list(all=True)}
        networks_before = {n.id for n in client.networks.list()}
    refused = {}
    for slug in ACCEPTED:
        result = run_shoal(
            "deploy", "-f", str(CORPUS / slug / "compose.yaml"), "--dry-run", "--json",
            "-H", corpus_agent.host_id, server=nats_server.url,
        )  # fmt: skip
        if result.code != 0:
            try:
                errors = {
                    r["rollout"]["service"]: r["errors"] or r["rollout"]["hosts"]
                    for r in result.json()["rollouts"]
                    if r["exit_code"] != 0
                }
            except ValueError:
                errors = {"cli": result.stderr[-400:]}
            refused[slug] = errors
            continue
        for rollout in result.json()["rollouts"]:
            assert rollout["rollout"]["dry_run"] is True
            assert rollout["rollout"]["hosts"] == {corpus_agent.host_id: "created"}, slug
    assert refused == {}, json.dumps(refused, indent=1)[:3000]
    with contextlib.closing(engines[2].client()) as client:
        assert {c.id for c in client.containers.list(all=True)} == before
        assert {n.id for n in client.networks.list()} == networks_before

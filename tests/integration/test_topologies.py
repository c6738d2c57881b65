"""The shipped NATS topologies (compose/nats/cluster, compose/nats/leaf) on real servers.

Each test starts its own nats-servers from the shipped configuration files, with
only the addresses, ports and store paths rewritten for this machine, and real
``shoal-agent`` processes whose Docker engine does not exist: their
``docker_unavailable`` answer to ``shoal ps`` proves the request reached them and
the reply came back. No Docker engine is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.msg import Msg

from shoal.controller.enroll import controller_user, enroll_host, render_users_conf
from shoal.protocol import Role, Subjects
from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import NatsServer, free_port, remove_tree, short_tempdir, start_all

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "compose/nats/cluster"
LEAF = ROOT / "compose/nats/leaf"
NO_DOCKER = "unix:///nonexistent.sock"
DEADLINE = 30.0

T = TypeVar("T")


def rewrite(text: str, old: str, new: str, *, count: int = 1) -> str:
    """Replace ``old`` on the configuration's active (uncommented) lines only.

    Fails when ``old`` does not occur exactly ``count`` times there, so that a
    change of the shipped file's shape shows up here instead of being ignored.
    """
    lines = text.splitlines(keepends=True)
    found = 0
    for index, line in enumerate(lines):
        if line.lstrip().startswith("#") or old not in line:
            continue
        found += line.count(old)
        lines[index] = line.replace(old, new)
    assert found == count, f"expected {count} active occurrence(s) of {old!r}, found {found}"
    return "".join(lines)


def local(text: str) -> str:
    """Bind every listener of a shipped config to loopback (the client and
    monitoring ports are set again by NatsServer's command line)."""
    return re.sub(r"(?m)^(\s*(?:listen|http):\s*)0\.0\.0\.0:", r"\g<1>127.0.0.1:", text)


def monitor(server: NatsServer, endpoint: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.monitor_port}/{endpoint}"
    with urllib.request.urlopen(url, timeout=2.0) as response:
        doc: dict[str, Any] = json.load(response)
        return doc


def leaves(hub: NatsServer) -> int:
    """How many leaf nodes are connected to ``hub`` right now."""
    return len(monitor(hub, "leafz").get("leafs") or [])


def client_names(server: NatsServer) -> set[str]:
    """Names of the clients connected to ``server`` right now."""
    if not server.running:
        return set()
    return {c.get("name", "") for c in monitor(server, "connz?limit=1024")["connections"]}


def server_of(host_id: str, servers: list[NatsServer]) -> NatsServer | None:
    """The server the agent for ``host_id`` is connected to."""
    for server in servers:
        if f"shoal-agent:{host_id}" in client_names(server):
            return server
    return None


class FleetAgent(AgentProcess):
    """An agent given several NATS URLs (``--server a,b,c``); ready-pings go to the first."""

    def __init__(self, workdir: Path, *, servers: list[str], host_id: str, trust: Path) -> None:
        super().__init__(
            workdir, server=servers[0], host_id=host_id, docker_host=NO_DOCKER, trust=trust
        )
        self.servers = servers

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--server") + 1] = ",".join(self.servers)
        return argv


def ps_reaches(server: NatsServer, hosts: list[str]) -> CliResult | None:
    """``shoal ps --json`` through ``server``; the result when every host answered
    (with docker_unavailable, since their engines do not exist), else None."""
    result = run_shoal("ps", "--json", "--timeout", "5", server=server.url)
    if result.code not in (1, 4) or not result.stdout.strip():
        return None
    doc = result.json()
    codes = {host: error["code"] for host, error in doc["errors"].items()}
    if doc["missing"] or codes != dict.fromkeys(hosts, "docker_unavailable"):
        return None
    return result


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir("shoal-topo-")
    try:
        yield path
    finally:
        remove_tree(path)


# --------------------------------------------------------------------------- cluster


def cluster_configs(workdir: Path) -> dict[str, str]:
    """n1.conf, n2.conf and n3.conf as shipped, on loopback with free route ports."""
    names = ("n1", "n2", "n3")
    route_ports = {name: free_port() for name in names}
    configs = {}
    for name in names:
        text = local((CLUSTER / f"{name}.conf").read_text())
        text = rewrite(text, "store_dir: /data/jetstream", f"store_dir: {workdir / name / 'js'}")
        # The cluster block's listen is the one on port 6222.
        text = rewrite(text, "127.0.0.1:6222", f"127.0.0.1:{route_ports[name]}")
        for peer in names:
            text = rewrite(
                text, f"nats-route://{peer}:6222", f"nats-route://127.0.0.1:{route_ports[peer]}"
            )
        configs[name] = text
    return configs


def test_cluster_routes_requests_and_agents_fail_over(workdir: Path, keys: Keys) -> None:
    configs = cluster_configs(workdir)
    # jetstream=False: JetStream and its store come from the shipped config itself.
    servers = [
        NatsServer(workdir / name, jetstream=False, config=config)
        for name, config in configs.items()
    ]
    agents: list[FleetAgent] = []
    try:
        start_all(servers)
        for server in servers:
            poll(
                f"{server.workdir.name} routed to both peers",
                lambda s=server: s.running and monitor(s, "routez")["num_routes"] >= 2,
                DEADLINE,
            )
        urls = [server.url for server in servers]

        # The registry with three replicas, as docs/deploy-agents.md says; retried
        # while the servers elect their JetStream meta leader.
        poll(
            "shoal init --replicas 3",
            lambda: run_shoal("init", "--replicas", "3", server=urls[0]).code == 0,
            DEADLINE,
        )

        # cluster-a has every URL. cluster-b has the two URLs of the servers that
        # cluster-a is not on (and learns the third from the cluster), so the two
        # agents end up on different servers; the controller uses the third one.
        agent_a = FleetAgent(
            workdir / "agent-a", servers=urls, host_id="cluster-a", trust=keys.trust
        )
        agents.append(agent_a)
        agent_a.start()
        home_a = server_of("cluster-a", servers)
        assert home_a is not None
        others = [server for server in servers if server is not home_a]
        agent_b = FleetAgent(
            workdir / "agent-b",
            servers=[server.url for server in others],
            host_id="cluster-b",
            trust=keys.trust,
        )
        agents.append(agent_b)
        agent_b.start()
        home_b = server_of("cluster-b", servers)
        assert home_b is not None and home_b is not home_a
        (third,) = [server for server in servers if server not in (home_a, home_b)]

        hosts = ["cluster-a", "cluster-b"]
        doc = poll(
            "shoal ps through the third server to reach both agents",
            lambda: ps_reaches(third, hosts),
        ).json()
        assert doc["targeted"] == hosts and doc["replies"] == {} and doc["missing"] == []

        # Stop cluster-a's server: the agent reconnects to another one and answers
        # again, through the same third server.
        home_a.stop()
        poll(
            "cluster-a reconnected to another server",
            lambda: server_of("cluster-a", servers) not in (None, home_a),
            DEADLINE,
        )
        poll(
            "shoal ps to reach both agents after a server stopped",
            lambda: ps_reaches(third, hosts),
        )
        listed = run_shoal("agents", "--json", server=third.url)
        assert listed.code == 0, listed.stderr
        states = {a["host_id"]: a["state"] for a in listed.json()["agents"]}
        assert states == dict.fromkeys(hosts, "online")
    finally:
        for agent in agents:
            agent.stop()
        for server in servers:
            server.cleanup()


# --------------------------------------------------------------------------- leaf node


def leaf_configs(workdir: Path) -> tuple[str, str]:
    """hub.conf and leaf.conf as shipped, with the leaf dialling the hub on loopback."""
    leaf_port = free_port()
    hub = local((LEAF / "hub.conf").read_text())
    hub = rewrite(hub, "store_dir: /data/jetstream", f"store_dir: {workdir / 'hub' / 'js'}")
    hub = rewrite(hub, "127.0.0.1:7422", f"127.0.0.1:{leaf_port}")
    leaf = local((LEAF / "leaf.conf").read_text())
    leaf = rewrite(leaf, "nats-leaf://hub.example.com:7422", f"nats-leaf://127.0.0.1:{leaf_port}")
    assert "jetstream" not in "".join(
        line for line in leaf.splitlines() if not line.lstrip().startswith("#")
    ), "the leaf runs without JetStream"
    return hub, leaf


def test_agent_behind_a_leaf_node_is_registered_and_answers_on_the_hub(
    workdir: Path, keys: Keys
) -> None:
    hub_config, leaf_config = leaf_configs(workdir)
    hub = NatsServer(workdir / "hub", jetstream=False, config=hub_config)  # JetStream: in hub.conf
    leaf = NatsServer(workdir / "leaf", jetstream=False, config=leaf_config)
    agent = AgentProcess(
        workdir / "agent",
        server=leaf.url,
        host_id="edge-board",
        docker_host=NO_DOCKER,
        labels={"site": "kitchen"},
        trust=keys.trust,
    )
    try:
        hub.start()
        leaf.start()
        poll(
            "the leaf connected to the hub",
            lambda: leaves(hub) == 1,
            DEADLINE,
        )
        assert run_shoal("init", server=hub.url).code == 0

        agent.start()  # its ready-ping goes through the leaf
        assert server_of("edge-board", [hub, leaf]) is leaf

        # The registry stream on the hub captures the heartbeats published at the leaf.
        listed: list[dict[str, Any]] = []

        def registered() -> bool:
            result = run_shoal("agents", "--json", server=hub.url)
            listed[:] = result.json()["agents"] if result.code == 0 else []
            return [a["host_id"] for a in listed] == ["edge-board"]

        poll("edge-board in the hub's registry", registered, DEADLINE)
        assert listed[0]["state"] == "online"
        assert listed[0]["facts"]["labels"] == {"site": "kitchen"}

        # Requests from a controller on the hub reach the agent on the leaf.
        result = run_shoal("ps", "-l", "site=kitchen", "--json", server=hub.url)
        assert result.code == 1, result.stderr
        doc = result.json()
        assert doc["targeted"] == ["edge-board"] and doc["missing"] == []
        assert doc["errors"]["edge-board"]["code"] == "docker_unavailable"
    finally:
        agent.stop()
        leaf.cleanup()
        hub.cleanup()


def assert_accounted(result: CliResult, hosts: list[str]) -> dict[str, Any]:
    """A fleet command's ``--json`` document in which every host of ``hosts`` was
    targeted and ended up in exactly one of replies, errors or missing (which names
    each host that did not answer): never a host silently dropped."""
    assert result.stdout.strip(), f"exit {result.code}, no JSON; stderr:\n{result.stderr}"
    doc: dict[str, Any] = result.json()
    assert doc["targeted"] == hosts, doc
    buckets = (set(doc["replies"]), set(doc["errors"]), set(doc["missing"]))
    for host in hosts:
        assert sum(host in bucket for bucket in buckets) == 1, (host, doc)
    assert set().union(*buckets) == set(hosts), doc
    assert result.code == (4 if doc["missing"] else 1 if doc["errors"] else 0), result
    return doc


def registry_states(server: NatsServer) -> dict[str, str]:
    """``shoal agents --json`` through ``server``: host id -> state."""
    result = run_shoal("agents", "--json", server=server.url)
    assert result.code == 0, result.stderr
    return {a["host_id"]: a["state"] for a in result.json()["agents"]}


def audit_counts(server: NatsServer, request_id: str) -> Counter[str]:
    """How many audit records each host published for ``request_id`` (the hub's
    audit stream captures those published at the leaf): one per request it received."""
    result = run_shoal("audit", "--json", server=server.url)
    assert result.code == 0, result.stderr
    return Counter(r["host"] for r in result.json()["records"] if r["request_id"] == request_id)


def audited_by_all(server: NatsServer, request_id: str, hosts: list[str]) -> Counter[str] | None:
    counts = audit_counts(server, request_id)
    return counts if set(counts) >= set(hosts) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def ps_across_a_restart(hub: NatsServer, leaf: NatsServer, hosts: list[str]) -> CliResult:
    """``shoal ps`` sent through the hub while the leaf is down, the leaf started again
    while the controller waits.

    A spy subscription on the hub sees the request go out to every host (so the leaf
    is restarted only once it has been sent during the outage; the spy also keeps the
    hub from answering "no responders", as when the hub has not noticed yet that a leaf
    went away). ``--offline-after`` keeps the hosts targeted as online, and
    ``--retries 1`` lets the controller resend to the hosts that stayed silent.
    """
    nc = await nats.connect(hub.url, allow_reconnect=False)
    sent_to: set[str] = set()
    everywhere = asyncio.Event()

    async def spy(msg: Msg) -> None:
        sent_to.add(msg.subject.split(".")[-2])
        if sent_to >= set(hosts):
            everywhere.set()

    try:
        await nc.subscribe(f"{Subjects().prefix}.host.*.ps", cb=spy)
        await nc.flush()
        cli = asyncio.create_task(
            asyncio.to_thread(
                run_shoal,
                *("--offline-after", "3600", "ps", "--json", "--timeout", "5", "--retries", "1"),
                server=hub.url,
            )
        )
        sent = asyncio.create_task(everywhere.wait())
        # Stop waiting early if the command ends without sending (it would be a bug).
        await asyncio.wait({sent, cli}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        sent.cancel()
        sent_everywhere = everywhere.is_set()
        await asyncio.to_thread(leaf.start)
        result = await cli
        assert sent_everywhere, f"the request went out only to {sorted(sent_to)}: {result}"
        return result
    finally:
        await nc.close()


def test_restarting_the_leaf_node_loses_nothing(workdir: Path, keys: Keys) -> None:
    """Issue #7: hub plus leaf, agents on the leaf, controller on the hub; the fleet
    answers, and restarting the leaf's nats-server (stopped by its pid, started again
    on the same ports and configuration) loses nothing once it is back."""
    hub_config, leaf_config = leaf_configs(workdir)
    hub = NatsServer(workdir / "hub", jetstream=False, config=hub_config)  # JetStream: in hub.conf
    leaf = NatsServer(workdir / "leaf", jetstream=False, config=leaf_config)
    hosts = ["edge-a", "edge-b", "edge-c"]
    agents = [
        AgentProcess(
            workdir / "agents",
            server=leaf.url,
            host_id=host,
            docker_host=NO_DOCKER,
            labels={"site": "kitchen"},
            trust=keys.trust,
        )
        for host in hosts
    ]
    codes: list[int | None] = []
    try:
        hub.start()
        leaf.start()
        poll(
            "the leaf connected to the hub",
            lambda: leaves(hub) == 1,
            DEADLINE,
        )
        init = run_shoal("init", server=hub.url)
        assert init.code == 0, init.stderr
        for agent in agents:
            agent.start(wait=False)
        for agent in agents:
            agent.wait_ready()  # its ready-ping goes through the leaf
        pids = [agent.pid for agent in agents]

        # The whole fleet answers the controller on the hub, and is registered there.
        poll("shoal ps on the hub to reach every agent", lambda: ps_reaches(hub, hosts))
        poll(
            "every agent online in the hub's registry",
            lambda: registry_states(hub) == dict.fromkeys(hosts, "online"),
            DEADLINE,
        )

        # Stop the leaf's nats-server by its pid; the agents lose their server.
        leaf_pid = leaf.pid
        leaf.stop()
        assert not pid_alive(leaf_pid)
        poll(
            "the hub to notice the leaf went away",
            lambda: leaves(hub) == 0,
            DEADLINE,
        )

        # A request during the outage: every host is named as missing, none dropped.
        outage_ps = run_shoal("ps", "--json", "--timeout", "3", server=hub.url)
        outage = assert_accounted(outage_ps, hosts)
        assert outage["missing"] == hosts and not outage["replies"] and not outage["errors"]
        plain = run_shoal("ps", "--timeout", "3", server=hub.url)
        assert plain.code == 4, plain.stderr
        for host in hosts:
            assert f"missing {host}:" in plain.stderr, plain.stderr

        # A request sent during the outage while the leaf comes back: each host is
        # either answered (after the controller's retry) or named as missing.
        across = assert_accounted(asyncio.run(ps_across_a_restart(hub, leaf, hosts)), hosts)
        assert set(across["errors"]) | set(across["missing"]) == set(hosts), across
        for error in across["errors"].values():
            assert error["code"] == "docker_unavailable", across

        # Back: the same agent processes reconnect to the leaf, answer the whole fleet's
        # ps on the hub again, and heartbeat into the hub's registry: all online.
        assert leaf.running
        poll(
            "the restarted leaf connected to the hub",
            lambda: leaves(hub) == 1,
            DEADLINE,
        )
        poll(
            "every agent reconnected to the restarted leaf",
            lambda: all(server_of(host, [hub, leaf]) is leaf for host in hosts),
            DEADLINE,
        )
        assert [agent.pid for agent in agents] == pids
        assert all(agent.process is not None and agent.process.poll() is None for agent in agents)
        after = poll(
            "shoal ps on the hub to reach every agent after the restart",
            lambda: ps_reaches(hub, hosts),
        ).json()
        assert after["targeted"] == hosts and after["missing"] == [] and after["replies"] == {}
        poll(
            "every agent online again in the hub's registry",
            lambda: registry_states(hub) == dict.fromkeys(hosts, "online"),
            DEADLINE,
        )

        # Work sent after the restart reached every host exactly once: one audit record
        # per host for its request id. A second request is the barrier: once each host
        # audited it, a late duplicate of the first (published earlier on the same
        # connection) would have been recorded already.
        first = poll(
            "every host to audit the request sent after the restart",
            lambda: audited_by_all(hub, after["request_id"], hosts),
        )
        barrier = ps_reaches(hub, hosts)
        assert barrier is not None, "the fleet stopped answering"
        poll(
            "every host to audit the barrier request",
            lambda: audited_by_all(hub, barrier.json()["request_id"], hosts),
        )
        assert audit_counts(hub, after["request_id"]) == first == Counter(hosts)
        # ... and the request cut off by the outage never ran late on any host.
        assert audit_counts(hub, outage["request_id"]) == Counter()
    finally:
        codes = [agent.stop() for agent in agents]
        leaf.cleanup()
        hub.cleanup()
    for agent, code in zip(agents, codes, strict=True):
        assert code == 0, agent.log()
        assert "reconnected to NATS" in agent.log_path.read_text(errors="replace"), agent.log()


def write_secret(path: Path, seed: bytes) -> Path:
    path.write_bytes(seed)
    path.chmod(0o600)
    return path


def uncomment_line(text: str, line: str) -> str:
    """Uncomment the one commented line ``# <line>``."""
    commented = f"# {line}\n"
    assert text.count(commented) == 1, f"expected one commented line {line!r}"
    return text.replace(commented, f"{line}\n")


def commented_site_user(hub_conf: str) -> str:
    """The example site user in hub.conf's comments, uncommented."""
    lines = hub_conf.splitlines()
    first = lines.index("  #   {")
    last = lines.index("  #   }", first)
    return "\n".join(line.removeprefix("  #   ") for line in lines[first : last + 1])


def test_leaf_with_the_commented_authorization_and_enrolled_users(
    workdir: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Authentication as the shipped comments describe: hub.conf's example site user
    and a 'shoal enroll --controller' user in the hub's users.conf, the site user in
    leaf.conf's remote URL, and a 'shoal enroll' agent user in the leaf's users.conf.
    Heartbeats, requests and replies still cross, and the agent sees no violation."""
    password = f"pw-{free_port()}"
    monkeypatch.setenv("SITE_KITCHEN_PASSWORD", password)  # hub.conf reads it
    hub_config, leaf_config = leaf_configs(workdir)
    hub_config = uncomment_line(hub_config, "include ./users.conf")
    leaf_port = re.search(r"nats-leaf://127\.0\.0\.1:(\d+)", leaf_config)
    assert leaf_port is not None
    leaf_config = rewrite(
        leaf_config,
        f"nats-leaf://127.0.0.1:{leaf_port[1]}",
        f"nats-leaf://site-kitchen:{password}@127.0.0.1:{leaf_port[1]}",
    )
    leaf_config = uncomment_line(leaf_config, "include ./users.conf")

    # What 'shoal enroll edge-board' and 'shoal enroll --controller ops' produce.
    agent_user = enroll_host(
        Subjects(), "edge-board", [("admin", keys.admin.signer.public_key, Role.ADMIN)]
    )
    _, controller_seed, controller_entry = controller_user(Subjects(), "ops")
    secrets = workdir / "secrets"
    secrets.mkdir()
    agent_seed = write_secret(secrets / "agent.nk", agent_user.nats_seed)
    controller_nk = write_secret(secrets / "controller.nk", controller_seed)
    # include ./users.conf is relative to the config file, which NatsServer writes
    # into its working directory.
    hub_users = [controller_entry, commented_site_user(hub_config)]
    for name, entries in (("hub", hub_users), ("leaf", [agent_user.nats_user])):
        (workdir / name).mkdir()
        (workdir / name / "users.conf").write_text(render_users_conf(entries))

    hub = NatsServer(workdir / "hub", jetstream=False, config=hub_config)
    leaf = NatsServer(workdir / "leaf", jetstream=False, config=leaf_config)
    agent = AgentProcess(
        workdir / "agent",
        server=leaf.url,
        host_id="edge-board",
        docker_host=NO_DOCKER,
        trust=keys.trust,
        extra=["--nkey", str(agent_seed)],
    )
    nkey = ("--nkey", str(controller_nk))
    try:
        hub.start()
        leaf.start()
        poll(
            "the leaf authenticated to the hub",
            lambda: leaves(hub) == 1,
            DEADLINE,
        )
        assert run_shoal(*nkey, "init", server=hub.url).code == 0
        agent.start(wait=False)

        def answered() -> dict[str, Any] | None:
            result = run_shoal(*nkey, "ps", "--json", "--timeout", "3", server=hub.url)
            if result.code != 1:
                return None
            doc: dict[str, Any] = result.json()
            return doc if "edge-board" in doc["errors"] else None

        doc = poll("the agent on the leaf to answer the controller on the hub", answered)
        assert doc["errors"]["edge-board"]["code"] == "docker_unavailable"
        listed = run_shoal(*nkey, "agents", "--json", server=hub.url)
        assert [a["host_id"] for a in listed.json()["agents"]] == ["edge-board"]
    finally:
        code = agent.stop()
        leaf.cleanup()
        hub.cleanup()
    assert code == 0, agent.log()
    assert "Permissions Violation" not in agent.log()

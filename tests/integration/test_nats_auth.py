"""The shipped least-privilege NATS configuration, and TLS, on real nats-servers."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from shoal.controller.enroll import controller_user, enroll_host, render_users_conf
from shoal.protocol import Role, Signer, Subjects, nkey
from shoal.protocol.connection import is_auth_error
from tests.integration.agents import AgentProcess, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import NatsServer, free_port

pytestmark = pytest.mark.nats

ROOT = Path(__file__).resolve().parents[2]
SUBJECTS = Subjects()
QUIET = 0.5


@dataclass
class AuthStack:
    server: NatsServer
    seeds: dict[str, Path]
    """NATS seed files: host ids and "controller"."""


def write_seed(path: Path, seed: bytes) -> Path:
    path.write_bytes(seed)
    path.chmod(0o600)
    return path


@pytest.fixture
def auth_stack(stack_dir: Path, keys: Keys) -> Iterator[AuthStack]:
    """compose/nats/auth.conf with users for two agents and a controller."""
    workdir = stack_dir / f"nats-auth-{free_port()}"
    workdir.mkdir()
    seeds: dict[str, Path] = {}
    entries = []
    for host in ("perm-a", "perm-b"):
        enrollment = enroll_host(
            SUBJECTS, host, [("admin", keys.admin.signer.public_key, Role.ADMIN)]
        )
        seeds[host] = write_seed(workdir / f"{host}.nk", enrollment.nats_seed)
        entries.append(enrollment.nats_user)
    _, seed, entry = controller_user(SUBJECTS, "ops")
    seeds["controller"] = write_seed(workdir / "controller.nk", seed)
    entries.append(entry)
    shipped = (ROOT / "compose/nats/auth.conf").read_text()
    config = shipped.replace("store_dir: /data/jetstream", f"store_dir: {workdir / 'js'}")
    # The shipped config includes ./users.conf, next to the config file itself.
    (workdir / "server").mkdir()
    (workdir / "server" / "users.conf").write_text(render_users_conf(entries))
    with NatsServer(workdir / "server", jetstream=False, config=config) as server:
        yield AuthStack(server, seeds)


ERRORS: dict[int, asyncio.Queue[str]] = {}


async def connect(url: str, seed: Path, inbox_prefix: str = "_INBOX") -> NATS:
    """A connection whose server errors can be awaited with :func:`server_error`."""
    errors: asyncio.Queue[str] = asyncio.Queue()

    async def on_error(exc: Exception) -> None:
        await errors.put(str(exc))

    nc = await nats.connect(
        url,
        nkeys_seed=str(seed),
        allow_reconnect=False,
        connect_timeout=3,
        inbox_prefix=inbox_prefix,
        error_cb=on_error,
    )
    ERRORS[id(nc)] = errors
    return nc


async def server_error(nc: NATS, deadline: float = 3.0) -> str:
    """The next error the server sent this connection, lower-cased."""
    return (await asyncio.wait_for(ERRORS[id(nc)].get(), deadline)).lower()


async def _permissions(stack: AuthStack) -> None:
    url = stack.server.url
    b = await connect(url, stack.seeds["perm-b"], SUBJECTS.agent_inbox_prefix("perm-b"))
    c = await connect(url, stack.seeds["controller"])
    try:
        inbox_b = await b.subscribe(SUBJECTS.host_all_verbs("perm-b"))
        watcher = await c.subscribe(SUBJECTS.heartbeat_all())
        await b.flush()
        await c.flush()

        # An agent may not send requests to another host, nor broadcast, nor forge
        # another host's heartbeat: the server refuses and drops each publish.
        for subject in (
            SUBJECTS.host("perm-b", "prune"),
            SUBJECTS.broadcast("prune"),
            SUBJECTS.heartbeat("perm-b"),
        ):
            a = await connect(url, stack.seeds["perm-a"], SUBJECTS.agent_inbox_prefix("perm-a"))
            try:
                await a.publish(subject, b"forged by agent a")
                await a.flush()
                assert "permissions violation for publish" in await server_error(a)
            finally:
                await a.close()
        # The controller may; its message is the first (and only) one that arrives.
        await c.publish(SUBJECTS.host("perm-b", "ps"), b"from the controller")
        await c.flush()
        assert (await inbox_b.next_msg(timeout=5)).data == b"from the controller"
        with pytest.raises(nats.errors.TimeoutError):
            await inbox_b.next_msg(timeout=QUIET)
        with pytest.raises(nats.errors.TimeoutError):  # no forged heartbeat either
            await watcher.next_msg(timeout=QUIET)

        # An agent may not listen to another host's requests, others' replies or heartbeats.
        for subject in (SUBJECTS.host_all_verbs("perm-b"), "_INBOX.>", "shoal.hb.>"):
            a = await connect(url, stack.seeds["perm-a"], SUBJECTS.agent_inbox_prefix("perm-a"))
            try:
                await a.subscribe(subject)
                await a.flush()
                assert "permissions violation for subscription" in await server_error(a)
            finally:
                await a.close()

        # What an agent may do: its own heartbeat.
        a = await connect(url, stack.seeds["perm-a"], SUBJECTS.agent_inbox_prefix("perm-a"))
        try:
            await a.publish(SUBJECTS.heartbeat("perm-a"), b"mine")
            await a.flush()
            while (seen := await watcher.next_msg(timeout=5)).subject != SUBJECTS.heartbeat(
                "perm-a"
            ):
                assert seen.subject != SUBJECTS.heartbeat("perm-b")
            assert seen.data == b"mine"
            assert ERRORS[id(a)].empty()
        finally:
            await a.close()
    finally:
        await b.close()
        await c.close()


def test_agent_credentials_are_limited_to_their_own_subjects(auth_stack: AuthStack) -> None:
    asyncio.run(_permissions(auth_stack))


@pytest.mark.parametrize("ed25519", ["pynacl", "ecdsa"])
def test_real_agent_and_cli_work_under_the_shipped_permissions(
    auth_stack: AuthStack, stack_dir: Path, keys: Keys, ed25519: str
) -> None:
    """With ``ecdsa``, the agent takes the path of a 32-bit ARM board, where PyNaCl has
    no wheel: pure-Python ed25519 for signatures, and Shoal's stand-in for the nkeys
    package signing the server's nonce."""
    agent = AgentProcess(
        stack_dir / f"perm-agent-{free_port()}",
        server=auth_stack.server.url,
        host_id="perm-a",
        docker_host="unix:///nonexistent/docker.sock",
        trust=keys.trust,
        extra=["--nkey", str(auth_stack.seeds["perm-a"])],
        env={"SHOAL_ED25519": ed25519},
    )
    agent.start(wait=False)
    nkey = ("--nkey", str(auth_stack.seeds["controller"]))
    try:

        def answered() -> bool:
            result = run_shoal(
                *nkey, "ps", "--json", "--timeout", "3", server=auth_stack.server.url
            )
            return result.code == 1 and "perm-a" in result.json()["errors"]

        poll("the agent to answer through the permissioned server", answered)
        doc = run_shoal(*nkey, "ps", "--json", server=auth_stack.server.url).json()
        assert doc["errors"]["perm-a"]["code"] == "docker_unavailable"  # signed and admitted
        agents_doc = run_shoal(*nkey, "agents", "--json", server=auth_stack.server.url).json()
        assert [a["host_id"] for a in agents_doc["agents"]] == ["perm-a"]
        audit = run_shoal(*nkey, "audit", "--json", server=auth_stack.server.url).json()
        assert any(r["host"] == "perm-a" and r["verb"] == "ps" for r in audit["records"])
        # A request signed by a key the agent does not trust is refused on either path.
        stranger = stack_dir / f"stranger-{free_port()}.nk"
        write_seed(stranger, Signer.generate().seed)
        refused = run_shoal(
            *nkey, "--key", str(stranger), "ps", "--json", server=auth_stack.server.url
        ).json()
        assert refused["errors"]["perm-a"]["code"] == "unauthorized"
    finally:
        assert agent.stop() == 0, agent.log()
    assert "Permissions Violation" not in agent.log()
    assert f"ed25519 by {ed25519}" in agent.log_path.read_text()


def test_nats_nkey_authentication_through_the_standin(
    auth_stack: AuthStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py authenticates with Shoal's stand-in where the nkeys package is missing."""
    monkeypatch.setitem(sys.modules, "nkeys", nkey.nkeys_standin())

    async def check() -> None:
        nc = await connect(auth_stack.server.url, auth_stack.seeds["controller"])
        try:
            assert nc.is_connected
            await nc.publish(SUBJECTS.host("perm-a", "ps"), b"{}")
            await nc.flush()
            assert ERRORS[id(nc)].empty()
        finally:
            await nc.close()
        # A seed the server does not know is refused just the same.
        unknown = auth_stack.seeds["controller"].with_name("unknown.nk")
        write_seed(unknown, nkey.KeyPair.generate().seed_text.encode())
        with pytest.raises(Exception) as refused:
            await connect(auth_stack.server.url, unknown)
        assert is_auth_error(refused.value), refused.value

    asyncio.run(check())


# --- TLS ------------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        cwd=directory,
    )
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        cwd=directory,
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
        cwd=directory,
    )
    return cert, key


@pytest.fixture
def tls_server(stack_dir: Path) -> Iterator[tuple[NatsServer, Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test CA")
    workdir = stack_dir / f"tls-{free_port()}"
    ca = make_ca(workdir, "shoal-test-ca")
    wrong_ca = make_ca(workdir, "some-other-ca")
    cert, key = make_server_cert(workdir, ca)
    config = f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n  timeout: 3\n}}\n'
    with NatsServer(workdir / "server", jetstream=True, config=config) as server:
        yield server, ca[0], wrong_ca[0]


def test_agent_and_cli_over_tls_and_a_wrong_ca_is_refused(
    tls_server: tuple[NatsServer, Path, Path], stack_dir: Path, keys: Keys
) -> None:
    server, ca, wrong_ca = tls_server
    url = f"tls://127.0.0.1:{server.port}"
    agent = AgentProcess(
        stack_dir / f"tls-agent-{free_port()}",
        server=url,
        host_id=f"tls-{free_port()}",
        docker_host="unix:///nonexistent/docker.sock",
        trust=keys.trust,
        extra=["--tlsca", str(ca)],
    )
    agent.start(wait=False)
    try:

        def answered() -> bool:
            result = run_shoal("--tlsca", str(ca), "ps", "--json", "--timeout", "3", server=url)
            return result.code == 1 and agent.host_id in result.json()["errors"]

        poll("the agent to answer over TLS", answered)
        refused = run_shoal("--tlsca", str(wrong_ca), "ps", server=url)
        assert refused.code == 5
        assert "TLS" in refused.stderr and "certificate verify failed" in refused.stderr
        wrong = AgentProcess(
            stack_dir / f"tls-wrong-{free_port()}",
            server=url,
            host_id=f"tls-{free_port()}",
            docker_host="unix:///nonexistent/docker.sock",
            trust=keys.trust,
            extra=["--tlsca", str(wrong_ca)],
        )
        wrong.start(wait=False)
        assert wrong.process is not None
        assert wrong.process.wait(30) == 1, wrong.log()
        assert "failed TLS" in wrong.log()
    finally:
        assert agent.stop() == 0, agent.log()

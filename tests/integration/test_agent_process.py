"""The agent process at its edges: NATS unreachable, credentials refused, bad flags."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.integration.agents import AgentProcess, run_shoal
from tests.poll import poll
from tests.stack import NatsServer, free_port

pytestmark = pytest.mark.nats

TOKEN = "s3cret-token"


@pytest.fixture
def token_server(stack_dir: Path) -> Iterator[NatsServer]:
    """A NATS server that requires a token."""
    with NatsServer(
        stack_dir / f"nats-token-{free_port()}",
        jetstream=False,
        config=f'authorization {{ token: "{TOKEN}" }}\n',
    ) as server:
        yield server


STARTED: list[AgentProcess] = []


@pytest.fixture(autouse=True)
def _stop_agents() -> Iterator[None]:
    """Every agent a test here made is stopped, whatever the test's outcome."""
    yield
    while STARTED:
        STARTED.pop().stop()


def agent(workdir: Path, server: str, *extra: str) -> AgentProcess:
    process = AgentProcess(
        workdir,
        server=server,
        host_id=f"edge-{free_port()}",
        docker_host="unix:///nonexistent/docker.sock",
        extra=list(extra),
    )
    STARTED.append(process)
    return process


def test_refused_credentials_end_the_agent_with_exit_1(
    token_server: NatsServer, stack_dir: Path
) -> None:
    process = agent(stack_dir / "edge", token_server.url, "--token", "wrong")
    process.start(wait=False)
    assert process.process is not None
    assert process.process.wait(30) == 1, process.log()
    assert "refused this agent's credentials" in process.log()


def test_the_right_token_connects_and_serves(token_server: NatsServer, stack_dir: Path) -> None:
    process = agent(stack_dir / "edge", token_server.url, "--token", TOKEN)
    process.start(wait=False)

    def answers() -> bool:
        result = run_shoal(
            "--token", TOKEN, "ps", "--json", "--timeout", "2", server=token_server.url
        )
        return result.code == 1 and process.host_id in result.json()["errors"]

    try:
        poll("the agent to answer through the token-protected server", answers)
        result = run_shoal("--token", TOKEN, "ps", "--json", server=token_server.url)
        assert result.json()["errors"][process.host_id]["code"] == "docker_unavailable"
    finally:
        assert process.stop() == 0, process.log()


def test_the_cli_names_refused_credentials(token_server: NatsServer) -> None:
    result = run_shoal("--token", "wrong", "ps", server=token_server.url)
    assert result.code == 5
    assert "refused the credentials" in result.stderr


def test_sigterm_while_nats_is_unreachable_exits_0_promptly(stack_dir: Path) -> None:
    process = agent(stack_dir / "edge", f"nats://127.0.0.1:{free_port()}")
    process.start(wait=False)
    assert process.process is not None
    with pytest.raises(subprocess.TimeoutExpired):
        process.process.wait(2)  # still trying to connect, not dead
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(10) == 0, process.log()


@pytest.mark.parametrize(
    ("extra", "loop"), [([], "uvloop"), (["--event-loop", "asyncio"], "asyncio")]
)
def test_the_agent_runs_on_the_event_loop_chosen(
    nats_server: NatsServer, stack_dir: Path, extra: list[str], loop: str
) -> None:
    """``auto`` takes uvloop (the CI venv has the extra); ``asyncio`` keeps asyncio's own."""
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        unavailable("uvloop is not installed (the 'uvloop' extra)")
    process = agent(stack_dir / "edge", nats_server.url, *extra)
    process.start(wait=False)
    poll("the agent to start", lambda: " starting (" in process.log())
    assert f"event loop {loop})" in process.log()
    assert process.stop() == 0, process.log()


@pytest.mark.parametrize(
    "extra",
    [
        ["--event-loop", "trio"],
        ["--server", "http://nats:4222"],
        ["--password", "x"],
        ["--tlscert", "/nonexistent.pem"],
        ["--label", "arch=arm64"],
        ["--label", "no-equals"],
        ["--host-id", "a.b"],
        ["--log-level", "chatty"],
    ],
)
def test_bad_configuration_exits_2_with_a_message(stack_dir: Path, extra: list[str]) -> None:
    process = agent(stack_dir / "edge", "nats://127.0.0.1:1", *extra)
    process.start(wait=False)
    assert process.process is not None
    assert process.process.wait(30) == 2, process.log()
    assert "Traceback" not in process.log()
    assert "invalid" in process.log().lower()


def test_check_health_follows_the_agent(nats_server: NatsServer, stack_dir: Path) -> None:
    health = stack_dir / f"health-{free_port()}.json"
    process = agent(stack_dir / "edge", nats_server.url)
    process.env = {"SHOAL_HEALTH_FILE": str(health)}
    check = [*process.argv()[:1], "--check-health"]
    env = {**os.environ, "SHOAL_HEALTH_FILE": str(health)}

    def healthy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            check, capture_output=True, text=True, timeout=30, env=env, check=False
        )

    assert healthy().returncode == 1  # not started
    process.start()
    try:
        poll("the health check to pass", lambda: healthy().returncode == 0)
        assert "connected" in healthy().stdout
    finally:
        assert process.stop() == 0
    result = healthy()
    assert result.returncode == 1 and "leaving" in result.stderr

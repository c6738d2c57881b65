"""``shoal top`` in a real terminal (tmux): hosts with their state, live changes, keys."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.agents import AgentProcess, _script
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine


class Tmux:
    """A detached tmux session running one command, read with capture-pane."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.name = f"shoal-top-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"env {exports} {shlex.join(command)}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", "220", "-y", "60", line],
            check=True,
            timeout=10,
        )
        # A server started without a client may keep its default size: make it the asked one.
        subprocess.run(
            ["tmux", "resize-window", "-t", self.name, "-x", "220", "-y", "60"],
            check=False,
            timeout=10,
        )

    def screen(self) -> str:
        done = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True, timeout=10)

    def alive(self) -> bool:
        done = subprocess.run(["tmux", "has-session", "-t", self.name], check=False, timeout=10)
        return done.returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False, timeout=10)


@pytest.fixture
def tmux_top(nats_server: NatsServer) -> Iterator[Tmux]:
    require(None if shutil.which("tmux") else "tmux is not installed (apt-get install tmux)")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("SHOAL_", "XDG_", "NATS_", "PATH", "HOME", "PYTHON"))
    }
    env.update(NATS_URL=nats_server.url, TERM="xterm-256color", COLUMNS="220", LINES="60")
    session = Tmux([*_script("shoal"), "top"], env)
    try:
        yield session
    finally:
        session.close()


def row_of(screen: str, host: str) -> str:
    return next((line for line in screen.splitlines() if line.startswith(host + " ")), "")


def test_top_shows_hosts_live(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
    tmux_top: Tmux,
) -> None:
    extra = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id=f"top-{test_label}"[:60],
        docker_host=engines[1].host,
        labels={"role": "top"},
        trust=keys.trust,
    )
    extra.start()
    name = f"topbox-{test_label}"[:60].strip("-")
    try:
        screen = poll(
            "every host to show online",
            lambda: (
                (s := tmux_top.screen())
                and all("online" in row_of(s, h) for h in [*agents, extra.host_id])
                and s
            ),
            30,
            interval=0.3,
            context=tmux_top.screen,
        )
        assert "shoal top" in screen and "HOST" in screen

        # A container started on an engine shows without a reload.
        with contextlib.closing(engines[1].client()) as client:
            client.containers.run(
                BUSYBOX_IMAGE,
                ["sleep", "3600"],
                name=name,
                network_mode="none",
                labels={TEST_LABEL: test_label},
                init=True,
                detach=True,
            )
        poll(
            "the started container to show",
            lambda: f"start {name}" in tmux_top.screen(),
            30,
            interval=0.3,
            context=tmux_top.screen,
        )

        # Filter with a selector, then drill into a host.
        tmux_top.keys("/")
        tmux_top.keys("role=top", "Enter")
        poll(
            "the filter to keep only the host with role=top",
            lambda: (
                (s := tmux_top.screen())
                and row_of(s, extra.host_id)
                and not row_of(s, "host-a")
                and s
            ),
            15,
            interval=0.3,
            context=tmux_top.screen,
        )
        tmux_top.keys("Escape")

        # An agent that stops goes offline.
        extra.stop()
        poll(
            "the stopped agent to show offline",
            lambda: "offline" in row_of(tmux_top.screen(), extra.host_id),
            30,
            interval=0.3,
            context=tmux_top.screen,
        )
        tmux_top.keys("q")
        poll("top to quit on q", lambda: not tmux_top.alive(), 10, interval=0.2)
    finally:
        extra.stop()
        with contextlib.closing(engines[1].client()) as client:
            for c in list_containers(client, {"label": TEST_LABEL}):
                if c.labels.get(TEST_LABEL) == test_label:
                    c.remove(force=True)
        subprocess.run(
            [*_script("shoal"), "agents", "forget", extra.host_id],
            env={**os.environ, "NATS_URL": nats_server.url},
            capture_output=True,
            check=False,
            timeout=30,
        )

"""The web dashboard in a real headless Chromium, against real agents and engines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_available
from tests.conftest import require
from tests.integration.agents import AgentProcess, _script, run_shoal
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer, list_containers

pytestmark = pytest.mark.engine

SCREENSHOTS = os.environ.get("SHOAL_SCREENSHOTS")
"""A folder to keep screenshots of the main views in (docs/images when regenerating)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard(nats_server: NatsServer, keys: Keys, tmp_path: Path) -> Iterator[str]:
    """``shoal serve --web --web-actions`` signing with the viewer key; its URL."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "NATS_URL": nats_server.url, "SHOAL_KEY": str(keys.viewer.path)}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*_script("shoal"), "serve", "--name", "web-test", "--web", f"127.0.0.1:{port}",
             "--web-actions"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        with urllib.request.urlopen(url + "api/fleet", timeout=2) as reply:
            return bool(reply.status == 200)

    try:
        poll(
            "the dashboard to answer",
            up,
            30,
            ignore=(OSError,),
            abort=lambda: None if process.poll() is None else "shoal serve exited",
            context=lambda: log.read_text(errors="replace"),
        )
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def browser() -> Iterator[Browser]:
    require(chromium_available())
    page = Browser()
    try:
        yield page
    finally:
        page.close()


def test_the_dashboard_shows_the_fleet_live(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    stack_dir: Path,
    keys: Keys,
    test_label: str,
    dashboard: str,
    browser: Browser,
) -> None:
    browser.goto(dashboard)

    def row(host: str) -> str:
        return str(
            browser.evaluate(
                f"(document.querySelector('tr.host[data-host={json.dumps(host)}]')"
                " || {innerText: ''}).innerText"
            )
        )

    poll(
        "every host to show online",
        lambda: all("online" in row(h) for h in agents),
        30,
        interval=0.2,
        context=lambda: browser.text(),
    )

    # A container started on an engine appears without a reload.
    name = f"webbox-{test_label}"[:60].strip("-")
    extra = AgentProcess(
        stack_dir / "agents",
        server=nats_server.url,
        host_id=f"web-{test_label}"[:60],
        docker_host=engines[0].host,
        trust=keys.trust,
    )
    try:
        with contextlib.closing(engines[0].client()) as client:
            client.containers.run(
                BUSYBOX_IMAGE, ["sleep", "3600"], name=name, network_mode="none",
                labels={TEST_LABEL: test_label}, init=True, detach=True,
            )  # fmt: skip
        poll(
            "the started container to show on the page",
            lambda: f"start {name}" in browser.text("#events"),
            30,
            interval=0.2,
            context=lambda: browser.text(),
        )
        if SCREENSHOTS:
            browser.screenshot(Path(SCREENSHOTS) / "dashboard.png")

        # An agent that stops goes offline on the page.
        extra.start()
        poll("the new agent online", lambda: "online" in row(extra.host_id), 30, interval=0.2)
        extra.stop()
        poll(
            "the stopped agent to show offline",
            lambda: "offline" in row(extra.host_id),
            30,
            interval=0.2,
            context=lambda: browser.text(),
        )

        # Drill into a host; an action under a key without the role is refused.
        assert browser.click("tr.host[data-host='host-a']")
        poll(
            "host-a's containers to show",
            lambda: name in browser.text("#detail"),
            30,
            interval=0.2,
            context=lambda: browser.text("#detail"),
        )
        if SCREENSHOTS:
            browser.screenshot(Path(SCREENSHOTS) / "dashboard-host.png")
        assert browser.click(f"button.restart[data-name='{name}']")
        notice = poll(
            "the restart to be refused",
            lambda: (text := browser.text("#notice")).startswith("refused") and text,
            30,
            interval=0.2,
            context=lambda: browser.text("#notice"),
        )
        assert "forbidden" in str(notice)
        with contextlib.closing(engines[0].client()) as client:
            assert client.containers.get(name).attrs["RestartCount"] == 0
    finally:
        extra.stop()
        with contextlib.closing(engines[0].client()) as client:
            for c in list_containers(client, {"label": TEST_LABEL}):
                if c.labels.get(TEST_LABEL) == test_label:
                    c.remove(force=True)
        run_shoal("agents", "forget", extra.host_id, server=nats_server.url)


def test_off_loopback_the_dashboard_needs_a_token(nats_server: NatsServer) -> None:
    result = run_shoal("serve", "--web", f"0.0.0.0:{free_port()}", server=nats_server.url)
    assert result.code == 2
    assert "needs a token" in result.stderr

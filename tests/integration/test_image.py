"""The agent image, built here offline and run for real (issue #7, "Agents as containers").

No image can be pulled on this machine, so everything an image needs is made here:

- a Python base image: a debootstrapped Debian rootfs with python3, python3-venv
  and tini (``tests.rootfs``, cached per machine), imported into a test engine;
- the project's wheelhouse, built on this machine with its own pip (``pip wheel``)
  and served on loopback; ``docker build`` gets it through the Dockerfile's
  ``PIP_NO_INDEX``/``PIP_FIND_LINKS`` build arguments, so pip in the image never
  sees an index;
- a NATS image holding only the static ``nats-server`` binary from the venv.

A container from the agent image, with the engine's socket mounted, host
networking and its state volume, joins the session's NATS server, answers
``shoal ps``, turns healthy, runs under tini as PID 1 and stops cleanly on
``docker stop``. ``compose/dev.yml`` comes up on the test engine with those local
images (and an override file giving every service host networking: no bridge
networks here), answers ``shoal ps``, and goes away with ``down -v``.

All of it happens on an engine of this module's own, so that its images, volumes
and build cache never meet other tests; the engine, the base image and the agent
image are made once per run. A skip is a failure under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require
from tests.integration.agents import Answers, CliResult, ping_host, run_shoal
from tests.integration.conftest import Keys
from tests.integration.wheels import project_version
from tests.poll import poll
from tests.rootfs import (
    RootfsError,
    debian_rootfs,
    file_lock,
    host_debian_arch,
    rootfs_python_version,
    rootfs_tar,
    rootfs_unavailable,
)
from tests.stack import (
    TEST_LABEL,
    DockerEngine,
    NatsServer,
    docker_available,
    free_port,
    nats_available,
    remove_tree,
    short_tempdir,
)

pytestmark = [pytest.mark.engine, pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PACKAGES = ["python3", "python3-venv", "tini"]
"""The base image's Debian packages (the cached rootfs is keyed by this list)."""

BASE_IMAGE = "shoal-test/debian-python:local"
AGENT_IMAGE = "shoal-test/shoal-agent:offline"
NATS_IMAGE = "shoal-test/nats:local"
IMAGE_LABEL = f"{TEST_LABEL}=image"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BUILD_TIMEOUT = 900.0
DOCKER_STOP_TIMEOUT = 10
"""``docker stop``'s grace before SIGKILL (also its default)."""
READY_DEADLINE = 60.0
HEALTHY_DEADLINE = 90.0
"""The image's HEALTHCHECK runs every 15 s: the first check comes 15 s after start."""


# --------------------------------------------------------------------------- helpers


def docker_cli() -> str:
    binary = shutil.which("docker")
    require(None if binary else "no docker CLI (apt-get install docker.io)")
    assert binary is not None
    return binary


def compose_cli() -> str:
    binary = shutil.which("docker-compose")
    require(None if binary else "no docker-compose (apt-get install docker-compose)")
    assert binary is not None
    return binary


@dataclass(frozen=True)
class Docker:
    """The docker CLI (and docker-compose) pointed at one test engine."""

    engine: DockerEngine
    config_dir: Path

    def env(self) -> dict[str, str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DOCKER_", "COMPOSE_", "SHOAL_", "NATS_"))
        }
        return {
            **clean,
            "DOCKER_HOST": self.engine.host,
            "DOCKER_CONFIG": str(self.config_dir),
            # The classic builder: this machine's CLI has no buildx plugin.
            "DOCKER_BUILDKIT": "0",
        }

    def run(
        self, *args: str, timeout: float = 120.0, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        result = self._execute([docker_cli(), *args], env, timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        doc: list[dict[str, Any]] = json.loads(self.run(kind, "inspect", name).stdout)
        return doc[0]

    def compose(
        self, *args: str, files: list[Path], project: str, env: dict[str, str], timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = [compose_cli(), "--project-directory", str(files[0].parent), "-p", project]
        for file in files:
            argv += ["-f", str(file)]
        return self._execute([*argv, *args], env, timeout)

    def _execute(
        self, argv: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env={**self.env(), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )


def cached_rootfs_tar(root: Path) -> Path:
    """The rootfs as a tarball for ``docker import``, made once beside it."""
    destination = root.with_name(root.name + ".tar")
    with file_lock(root.with_name(f".{root.name}.tar.lock")):
        return rootfs_tar(root, destination)


class Wheelhouse:
    """A directory of wheels served over HTTP on 127.0.0.1, remembering what was fetched."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requested: list[str] = []
        requested = self.requested

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                requested.append(self.path)

        handler = functools.partial(Handler, directory=str(directory))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> Wheelhouse:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------- module fixtures


@pytest.fixture(scope="module")
def image_dir() -> Iterator[Path]:
    path = short_tempdir("shoal-img-")
    try:
        yield path
    finally:
        remove_tree(path)


@pytest.fixture(scope="module")
def docker(image_dir: Path) -> Iterator[Docker]:
    """This module's own engine, with the docker CLI pointed at it."""
    require(docker_available())
    docker_cli()
    engine = DockerEngine("img-host", image_dir / "engine")
    config = image_dir / "docker-config"
    config.mkdir()
    with engine:
        try:
            yield Docker(engine, config)
        finally:
            if engine.running:
                with contextlib.closing(engine.client(timeout=30)) as client:
                    for container in client.containers.list(all=True):
                        container.remove(force=True, v=True)


@pytest.fixture(scope="module")
def base_image(docker: Docker) -> str:
    """A local Python base image: the cached Debian rootfs, imported into the engine."""
    arch = host_debian_arch()
    require(rootfs_unavailable(arch))
    try:
        root = debian_rootfs(arch, PACKAGES)
    except RootfsError as exc:
        require(f"no Debian rootfs for the base image: {exc}")
        raise
    ours = f"{sys.version_info.major}.{sys.version_info.minor}"
    theirs = rootfs_python_version(root)
    require(
        None
        if theirs == ours
        else f"the rootfs has Python {theirs}, this machine {ours}: the wheels would not fit"
    )
    docker.run(
        "import",
        "--change", f"ENV PATH={SYSTEM_PATH}",
        "--change", 'CMD ["python3"]',
        str(cached_rootfs_tar(root)),
        BASE_IMAGE,
        timeout=300,
    )  # fmt: skip
    return BASE_IMAGE


@dataclass(frozen=True)
class AgentImage:
    tag: str
    wheels: frozenset[str]
    """File names in the wheelhouse."""
    fetched: frozenset[str]
    """Wheel file names the build fetched from the wheelhouse."""
    build_log: str


@pytest.fixture(scope="module")
def agent_image(docker: Docker, base_image: str, wheelhouse: Path) -> AgentImage:
    """The agent image from the repository's Dockerfile and .dockerignore, offline."""
    wheels = wheelhouse
    with Wheelhouse(wheels) as house:
        result = docker.run(
            "build",
            "--network", "host",  # RUN steps reach the wheelhouse on 127.0.0.1
            "--build-arg", f"BASE_IMAGE={base_image}",
            "--build-arg", "PIP_NO_INDEX=1",
            "--build-arg", f"PIP_FIND_LINKS={house.url}",
            "--label", IMAGE_LABEL,
            "--tag", AGENT_IMAGE,
            "--file", str(ROOT / "Dockerfile"),
            str(ROOT),
            timeout=BUILD_TIMEOUT,
        )  # fmt: skip
        fetched = frozenset(Path(path).name for path in house.requested if path.endswith(".whl"))
    return AgentImage(
        AGENT_IMAGE,
        frozenset(p.name for p in wheels.glob("*.whl")),
        fetched,
        result.stdout + result.stderr,
    )


@pytest.fixture(scope="module")
def nats_image(docker: Docker, image_dir: Path) -> str:
    """An image holding only the static nats-server binary, on PATH."""
    require(nats_available())
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    folder = image_dir / "nats-rootfs"
    (folder / "usr/local/bin").mkdir(parents=True)
    (folder / "tmp").mkdir(mode=0o1777)
    shutil.copy2(binary, folder / "usr/local/bin/nats-server")
    tarball = image_dir / "nats-rootfs.tar"
    subprocess.run(
        ["tar", "-C", str(folder), "--owner=0", "--group=0", "-cf", str(tarball), "."],
        check=True,
        timeout=120,
    )
    docker.run(
        "import",
        "--change", "ENV PATH=/usr/local/bin",
        "--change", 'CMD ["nats-server"]',
        str(tarball),
        NATS_IMAGE,
    )  # fmt: skip
    return NATS_IMAGE


# --------------------------------------------------------------------------- the image


def test_image_is_built_offline_from_the_local_base_and_wheelhouse(
    docker: Docker, base_image: str, agent_image: AgentImage
) -> None:
    # pip in the image built the project's wheel from the build context and took
    # everything else from the wheelhouse: its build backend, every dependency and
    # uvloop (PIP_NO_INDEX: there was nothing else to take them from).
    def fetched(prefix: str) -> bool:
        return any(name.startswith(prefix) for name in agent_image.fetched)

    for prefix in ("setuptools-", "wheel-", "uvloop-", "nats_py-", "pydantic_core-"):
        assert fetched(prefix), f"no {prefix}* fetched from the wheelhouse: {agent_image.fetched}"
    assert agent_image.fetched <= agent_image.wheels
    unused = agent_image.wheels - agent_image.fetched
    assert [name.split("-")[0] for name in unused] == ["shoal"], unused

    image = docker.inspect("image", agent_image.tag)
    base = docker.inspect("image", base_image)
    layers = image["RootFS"]["Layers"]
    assert layers[: len(base["RootFS"]["Layers"])] == base["RootFS"]["Layers"], "not on the base"
    config = image["Config"]
    assert config["Entrypoint"] == ["tini", "--", "shoal-agent"]
    assert config["Healthcheck"]["Test"] == ["CMD", "shoal-agent", "--check-health"]
    assert "/var/lib/shoal" in config["Volumes"]
    assert config["Labels"]["org.opencontainers.image.title"] == "shoal-agent"

    # The agent, the CLI and uvloop run in it, with no network at all.
    version = docker.run("run", "--rm", "--network", "none", agent_image.tag, "--version")
    assert project_version() in version.stdout
    probe = docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "python3", agent_image.tag, "-c",
        "import sys, shutil, importlib.util, uvloop, shoal.agent, shoal.controller; "
        "print(sys.prefix, shutil.which('shoal'), shutil.which('tini'), shutil.which('pip'), "
        "importlib.util.find_spec('agent'))",
    )  # fmt: skip
    prefix, shoal, tini, pip, bare = probe.stdout.split()
    assert bare == "None", "installed as shoal.agent, not as a top-level agent package"
    assert prefix == "/opt/shoal" and shoal == "/opt/shoal/bin/shoal", probe.stdout
    assert tini == "/usr/bin/tini", "tini from the base image, not fetched"
    assert pip == "None", "pip is removed from the final image"


# --------------------------------------------------------------------------- a container


@dataclass
class AgentContainer:
    name: str
    host_id: str
    volume: str


def agent_state(nats_server: NatsServer, host_id: str) -> str | None:
    result = run_shoal("agents", "--json", server=nats_server.url)
    assert result.code == 0, result.stderr
    for record in result.json()["agents"]:
        if record["host_id"] == host_id:
            return str(record["state"])
    return None


def shoal_ps(nats_server: NatsServer, host_id: str, *args: str) -> CliResult:
    return run_shoal("ps", "--json", "-H", host_id, *args, server=nats_server.url)


@pytest.fixture
def agent_container(
    docker: Docker, agent_image: AgentImage, nats_server: NatsServer, keys: Keys, test_label: str
) -> Iterator[AgentContainer]:
    """The agent image running as the docs say: socket, state volume, trust file,
    settings in the environment; host networking to reach NATS on loopback."""
    init = run_shoal("init", server=nats_server.url)
    assert init.code == 0, init.stderr
    made = AgentContainer(f"agent-{test_label}", f"img-{test_label}", f"state-{test_label}")
    docker.run("volume", "create", "--label", f"{TEST_LABEL}={test_label}", made.volume)
    try:
        docker.run(
            "run", "--detach", "--name", made.name,
            "--label", f"{TEST_LABEL}={test_label}",
            "--network", "host",
            "--volume", f"{docker.engine.socket_path}:/var/run/docker.sock",
            "--volume", f"{made.volume}:/var/lib/shoal",
            "--volume", f"{keys.trust}:/etc/shoal/trust.toml:ro",
            "--env", f"NATS_URL={nats_server.url}",
            "--env", "SHOAL_TRUST=/etc/shoal/trust.toml",
            "--env", f"SHOAL_HOST_ID={made.host_id}",
            "--env", "SHOAL_LABELS=role=image-test",
            agent_image.tag,
        )  # fmt: skip

        def answers() -> bool:
            running = docker.inspect("container", made.name)["State"]["Running"]
            assert running, docker.run("logs", made.name).stderr[-3000:]
            return asyncio_ping(nats_server.url, made.host_id)

        poll(f"the agent container {made.name} to answer a ping", answers, READY_DEADLINE)
        yield made
    finally:
        docker.run("rm", "--force", "--volumes", made.name, check=False)
        docker.run("volume", "rm", "--force", made.volume, check=False)
        run_shoal("agents", "forget", made.host_id, server=nats_server.url)


def asyncio_ping(url: str, host_id: str) -> bool:
    return asyncio.run(ping_host(url, host_id, timeout=1.0)) is not None


def container_process(docker: Docker, name: str) -> tuple[list[str], list[list[str]]]:
    """The container's PID 1 command line and those of its children, seen from here."""
    pid = docker.inspect("container", name)["State"]["Pid"]

    def cmdline(p: int | str) -> list[str]:
        raw = Path(f"/proc/{p}/cmdline").read_bytes()
        return [part.decode() for part in raw.split(b"\0") if part]

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cmdline(pid), [cmdline(child) for child in children]


def journal_verbs(path: Path) -> set[str]:
    """Verbs of the requests in an agent's journal (JSON lines)."""
    verbs = set()
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            verbs.add(str(json.loads(line)["verb"]))
    return verbs


def test_agent_container_answers_ps_turns_healthy_under_tini_with_its_state_volume(
    docker: Docker, nats_server: NatsServer, agent_container: AgentContainer
) -> None:
    host = agent_container.host_id
    result = shoal_ps(nats_server, host)
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["targeted"] == [host] and doc["missing"] == [] and doc["errors"] == {}
    # The agent sees the engine whose socket it got: its own container is on it.
    own = docker.inspect("container", agent_container.name)
    listed = {c["id"]: c for c in doc["replies"][host]["containers"]}
    assert own["Id"] in listed, listed
    assert listed[own["Id"]]["image"] == AGENT_IMAGE
    assert listed[own["Id"]]["state"] == "running"

    # The image's own HEALTHCHECK (every 15 s) turns healthy once it is connected.
    def healthy() -> bool:
        health = docker.inspect("container", agent_container.name)["State"]["Health"]
        assert health["Status"] in ("starting", "healthy"), health
        return bool(health["Status"] == "healthy")

    poll("the container's health check to pass", healthy, HEALTHY_DEADLINE)
    log = docker.inspect("container", agent_container.name)["State"]["Health"]["Log"]
    assert log[-1]["ExitCode"] == 0 and f"{host} connected" in log[-1]["Output"], log

    # tini is PID 1, the agent its child.
    pid1, children = container_process(docker, agent_container.name)
    assert Path(pid1[0]).name == "tini" and pid1[1:3] == ["--", "shoal-agent"], pid1
    assert any(Path(arg).name == "shoal-agent" for child in children for arg in child[:2]), children

    # Its state lives in the named volume: the health file and the request journal.
    mounts = {m["Destination"]: m for m in own["Mounts"]}
    state = mounts["/var/lib/shoal"]
    assert state["Type"] == "volume" and state["Name"] == agent_container.volume, state
    on_disk = Path(docker.inspect("volume", agent_container.volume)["Mountpoint"])
    health = json.loads((on_disk / "health.json").read_text())
    assert health["host_id"] == host and health["connected"], health
    assert health["docker_reachable"], "the mounted socket reaches the engine"
    assert f"{host} connected; Docker reachable" in log[-1]["Output"], log
    assert "ps" in journal_verbs(on_disk / host / "requests.jsonl")


def test_docker_stop_ends_the_agent_cleanly_and_the_host_shows_offline(
    docker: Docker, nats_server: NatsServer, agent_container: AgentContainer
) -> None:
    host = agent_container.host_id
    poll("the container agent in the registry", lambda: agent_state(nats_server, host) == "online")
    answered = shoal_ps(nats_server, host)
    assert answered.code == 0, answered.stderr
    started = time.monotonic()
    docker.run("stop", "--time", str(DOCKER_STOP_TIMEOUT), agent_container.name, timeout=60)
    took = time.monotonic() - started
    state = docker.inspect("container", agent_container.name)["State"]
    # 0: the agent's own clean exit passed on by tini; 143: tini ended by the SIGTERM
    # it forwarded; 137 would be docker's SIGKILL after the grace period.
    assert state["ExitCode"] in (0, 128 + signal.SIGTERM), state
    assert not state["OOMKilled"] and took < DOCKER_STOP_TIMEOUT, (state, took)
    logs = docker.run("logs", agent_container.name)
    assert f"agent {host} stopped" in logs.stdout + logs.stderr

    # The leaving heartbeat marks it offline; ps reports it so (exit 4) at once.
    poll("the stopped agent to show offline", lambda: agent_state(nats_server, host) == "offline")
    result = shoal_ps(nats_server, host, "--timeout", "10")
    assert result.code == 4, result.stderr
    assert result.json()["offline"] == [host] and result.json()["missing"] == [host]

    # The state outlives the container: its journal stays in the volume.
    docker.run("rm", agent_container.name)
    on_disk = Path(docker.inspect("volume", agent_container.volume)["Mountpoint"])
    assert "ps" in journal_verbs(on_disk / host / "requests.jsonl")


# --------------------------------------------------------------------------- compose/dev.yml


def host_network_override(
    path: Path, *, host_id: str, socket: Path, secrets: Path, nats_port: int
) -> Path:
    """Every service on the host's network (no bridge networks here), NATS on loopback,
    the test engine's socket and the test's trust file instead of this host's."""
    override = {
        "services": {
            "nats": {
                "network_mode": "host",
                "command": "nats-server -c /etc/nats/shoal.conf -js -a 127.0.0.1"
                " -p ${SHOAL_NATS_PORT} -m ${SHOAL_NATS_HTTP_PORT}",
            },
            "agent": {
                "network_mode": "host",
                "environment": {
                    "NATS_URL": f"nats://127.0.0.1:{nats_port}",
                    "SHOAL_HOST_ID": host_id,
                },
                "volumes": [
                    f"{socket}:/var/run/docker.sock",
                    f"{secrets}:/etc/shoal:ro",
                ],
            },
        }
    }
    path.write_text(yaml.safe_dump(override, sort_keys=False))
    return path


def test_dev_compose_comes_up_with_local_images_and_answers_ps(
    docker: Docker, agent_image: AgentImage, nats_image: str, test_label: str
) -> None:
    workdir = short_tempdir("shoal-dev-")
    project = f"dev-{test_label}"
    host_id = f"dev-{test_label}"
    nats_port, http_port = free_port(), free_port()
    env = {
        "SHOAL_DEV_IMAGE": agent_image.tag,
        "SHOAL_NATS_IMAGE": nats_image,
        "SHOAL_NATS_PORT": str(nats_port),
        "SHOAL_NATS_HTTP_PORT": str(http_port),
    }
    nats_url = f"nats://127.0.0.1:{nats_port}"
    try:
        run_dev_compose(docker, workdir, project, host_id, env, nats_url)
    finally:
        remove_tree(workdir)


def run_dev_compose(
    docker: Docker, workdir: Path, project: str, host_id: str, env: dict[str, str], nats_url: str
) -> None:
    # compose/dev-init.sh, as the file says, run on a copy: the user's key and
    # trust file in compose/dev-secrets stay untouched.
    (workdir / "compose").mkdir()
    script = shutil.copy(COMPOSE / "dev-init.sh", workdir / "compose" / "dev-init.sh")
    shoal = Path(sys.executable).parent / "shoal"
    cli_env = {"XDG_CONFIG_HOME": str(workdir / "config")}
    init = subprocess.run(
        ["sh", str(script)],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "NATS_"))},
            **cli_env,
            "SHOAL": str(shoal) if shoal.exists() else "shoal",
            "SHOAL_HOST_ID": host_id,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    files = [
        COMPOSE / "dev.yml",
        host_network_override(
            workdir / "host-network.yml",
            host_id=host_id,
            socket=docker.engine.socket_path,
            secrets=workdir / "compose" / "dev-secrets",
            nats_port=int(env["SHOAL_NATS_PORT"]),
        ),
    ]
    up_files = files
    try:
        # dev.yml alone: its ports and the agent's NATS URL follow SHOAL_NATS_PORT.
        alone = docker.compose("config", files=files[:1], project=project, env=env)
        assert alone.returncode == 0, alone.stderr
        port = env["SHOAL_NATS_PORT"]
        services = yaml.safe_load(alone.stdout)["services"]
        assert f"127.0.0.1:{port}:{port}/tcp" in services["nats"]["ports"]
        assert services["agent"]["environment"]["NATS_URL"] == f"nats://nats:{port}"
        config = docker.compose("config", files=files, project=project, env=env)
        assert config.returncode == 0, config.stderr
        services = yaml.safe_load(config.stdout)["services"]
        assert services["nats"]["image"] == env["SHOAL_NATS_IMAGE"]
        assert services["agent"]["image"] == env["SHOAL_DEV_IMAGE"]
        assert {s["network_mode"] for s in services.values()} == {"host"}
        assert env["SHOAL_NATS_PORT"] in services["nats"]["command"]
        # Host networking publishes no ports: newer engines and compose v2 ignore
        # dev.yml's with a warning, compose v1 refuses them, and an override cannot
        # remove list entries there. So v1 brings up the merged file without them.
        merged = yaml.safe_load(config.stdout)
        for service in merged["services"].values():
            service.pop("ports", None)
        (workdir / "dev-host-network.yml").write_text(yaml.safe_dump(merged))
        up_files = [workdir / "dev-host-network.yml"]
        up = docker.compose(
            "up", "--detach", "--no-build", files=up_files, project=project, env=env
        )
        assert up.returncode == 0, up.stdout + up.stderr

        def as_user(*args: str) -> CliResult:
            # The user's own key, made by dev-init.sh, signs (not the session's).
            config_home = cli_env["XDG_CONFIG_HOME"]
            return run_shoal(
                *args, server=nats_url, unset=("SHOAL_KEY",), XDG_CONFIG_HOME=config_home
            )

        def answers() -> bool:
            return as_user("ps", "--json", "-H", host_id, "--timeout", "2").code == 0

        poll("the dev agent to answer shoal ps", answers, READY_DEADLINE)
        result = as_user("ps", "--json")
        assert result.code == 0, result.stderr
        doc = result.json()
        assert doc["targeted"] == [host_id], "the dev NATS server has this agent only"
        names = {c["name"] for c in doc["replies"][host_id]["containers"]}
        with contextlib.closing(docker.engine.client()) as client:
            ours = client.containers.list(
                filters={"label": f"com.docker.compose.project={project}"}
            )
            assert {c.name for c in ours} <= names and len(ours) == 2, (names, ours)
            assert {c.labels["com.docker.compose.service"] for c in ours} == {"nats", "agent"}
            assert not [n for n in client.networks.list() if n.name.startswith(project)]
    finally:
        down = docker.compose("down", "--volumes", files=up_files, project=project, env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    with contextlib.closing(docker.engine.client()) as client:
        project_filter = {"label": f"com.docker.compose.project={project}"}
        assert client.containers.list(all=True, filters=project_filter) == []
        assert client.volumes.list(filters=project_filter) == []


# --------------------------------------------------------------------------- self-upgrade

NEXT_VERSION = "0.1.1.dev7"
NEXT_IMAGE = "shoal-test/shoal-agent:next"
BROKEN_IMAGE = "shoal-test/shoal-agent:broken"


@pytest.fixture(scope="module")
def upgrade_images(docker: Docker, agent_image: AgentImage, image_dir: Path) -> dict[str, str]:
    """The agent image as a new version (only its version string changed), and an image
    whose agent cannot start."""
    made = {}
    for tag, body in (
        (
            NEXT_IMAGE,
            "RUN sed -i 's/^__version__ = .*/__version__ = \"" + NEXT_VERSION + "\"/' "
            "/opt/shoal/lib/python3*/site-packages/shoal/agent/__init__.py"
            " && shoal-agent --version | grep -F " + NEXT_VERSION,
        ),
        (BROKEN_IMAGE, 'ENTRYPOINT ["/bin/sh", "-c", "echo this agent cannot start >&2; exit 3"]'),
    ):
        folder = image_dir / tag.rsplit(":", 1)[1]
        folder.mkdir()
        (folder / "Dockerfile").write_text(f"FROM {agent_image.tag}\n{body}\n")
        docker.run("build", "--tag", tag, "--label", IMAGE_LABEL, str(folder), timeout=300)
        made[tag] = tag
    return made


def agent_version(nats_server: NatsServer, host_id: str) -> str:
    result = run_shoal("agents", "--json", "-H", host_id, server=nats_server.url)
    assert result.code == 0, result.stderr
    (record,) = result.json()["agents"]
    return str(record["facts"]["agent_version"])


def upgrade_agent(nats_server: NatsServer, host: str, image: str, *args: str) -> CliResult:
    return run_shoal(
        "agents", "upgrade", "-H", host, "--image", image, "--yes", "--json",
        "--deadline", "60", *args,
        server=nats_server.url, timeout=300,
    )  # fmt: skip


def test_an_agent_container_upgrades_itself_and_an_agent_that_cannot_start_is_rolled_back(
    docker: Docker,
    nats_server: NatsServer,
    agent_container: AgentContainer,
    upgrade_images: dict[str, str],
) -> None:
    host, name = agent_container.host_id, agent_container.name
    before = docker.inspect("container", name)
    with Answers(nats_server.url, host) as answers:
        result = upgrade_agent(nats_server, host, NEXT_IMAGE, "--version", NEXT_VERSION)
    assert result.code == 0, result.stdout + result.stderr
    (outcome,) = result.json()["hosts"]
    assert outcome["outcome"] == "upgraded", outcome
    assert outcome["old_version"] == project_version() and outcome["version"] == NEXT_VERSION
    assert outcome["old_image"] == AGENT_IMAGE and outcome["image"] == NEXT_IMAGE
    assert f"{host} | upgraded to {NEXT_VERSION}" in result.stderr
    # The host answered throughout, but for the swap, and with the new version after it.
    assert answers.times and answers.longest_gap() < 45, answers.longest_gap()
    assert agent_version(nats_server, host) == NEXT_VERSION

    # The container of the same name runs the new image, with the same settings and state.
    after = docker.inspect("container", name)
    assert after["Id"] != before["Id"] and after["Config"]["Image"] == NEXT_IMAGE
    assert after["HostConfig"]["NetworkMode"] == "host"
    assert after["HostConfig"]["Binds"] == before["HostConfig"]["Binds"]
    assert after["Config"]["Labels"][TEST_LABEL] == before["Config"]["Labels"][TEST_LABEL]
    env = set(after["Config"]["Env"])
    assert f"SHOAL_HOST_ID={host}" in env and f"NATS_URL={nats_server.url}" in env
    mounts = {m["Destination"]: m for m in after["Mounts"]}
    assert mounts["/var/lib/shoal"]["Name"] == agent_container.volume
    assert docker.run("inspect", before["Id"], check=False).returncode != 0, "the old one is gone"
    assert docker.run("inspect", f"{name}-shoal-next", check=False).returncode != 0
    helper = docker.inspect("container", outcome["helper"])
    assert helper["State"]["ExitCode"] == 0 and helper["HostConfig"]["NetworkMode"] == "none"

    # An image whose agent cannot start: the old agent comes back, and says why.
    upgraded = after
    with Answers(nats_server.url, host) as answers:
        broken = upgrade_agent(nats_server, host, BROKEN_IMAGE)
    assert broken.code == 1, broken.stdout + broken.stderr
    (outcome,) = broken.json()["hosts"]
    assert outcome["outcome"] == "rolled_back", outcome
    assert outcome["version"] == NEXT_VERSION, outcome
    assert "rolled back" in outcome["reason"] or "exited" in outcome["reason"], outcome
    assert answers.times and answers.longest_gap() < 90, answers.longest_gap()
    assert agent_version(nats_server, host) == NEXT_VERSION
    restored = docker.inspect("container", name)
    assert restored["Id"] == upgraded["Id"] and restored["State"]["Running"]
    assert docker.run("inspect", f"{name}-shoal-next", check=False).returncode != 0
    helper = docker.inspect("container", outcome["helper"])
    assert helper["State"]["ExitCode"] == 1
    assert "this agent cannot start" in docker.run("logs", outcome["helper"]).stdout

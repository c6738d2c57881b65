"""The agent's packaging: Dockerfile, compose files, NATS configs, systemd unit.

No image can be pulled here, so the Dockerfile is checked as text (the build
itself is documented in docs/deploy-agents.md), and what it promises is checked
on the real agent: the health check its HEALTHCHECK runs, and a clean stop on
SIGTERM as PID 1 of its own PID namespace under the ENTRYPOINT's init, as
``docker stop`` does it. Compose files are read by Debian's docker-compose (v1),
NATS configs by nats-server, the systemd unit by systemd-analyze.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
import yaml

from shoal.agent.cli import app as agent_app
from shoal.agent.config import AgentSettings
from shoal.agent.venvs import RESTART_EXIT
from tests.conftest import require
from tests.integration.agents import ping_host
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.stack import NatsServer, nats_available, remove_tree, short_tempdir

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose"
DOCKER_STOP_TIMEOUT = 10.0
"""Seconds ``docker stop`` waits before SIGKILL unless told otherwise."""

ARCH_WORDS = re.compile(
    r"amd64|x86_64|x86-64|aarch64|arm64|armv\d|armhf|armel|i[36]86|ppc64|s390x|--platform|"
    r"TARGETARCH|TARGETPLATFORM|TARGETVARIANT|uname\s+-m|dpkg\s+--print-architecture",
    re.IGNORECASE,
)
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|musl-dev|libc6-dev)\b")


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int
    """-1 before the first FROM."""


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def image_env() -> dict[str, str]:
    """ENV of the final stage (``KEY=value`` pairs, quotes removed)."""
    env: dict[str, str] = {}
    for instruction in final_stage(dockerfile()):
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV KEY=value: {instruction.args}"
                env[key] = value
    return env


def test_base_image_is_a_build_argument_defaulting_to_official_slim_python() -> None:
    instructions = dockerfile()
    args = [i for i in instructions if i.keyword == "ARG" and i.stage == -1]
    assert [a.args.partition("=")[0] for a in args] == ["BASE_IMAGE"]
    default = args[0].args.partition("=")[2]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-[a-z]+)?", default), default
    froms = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    assert all(f[0] == "${BASE_IMAGE}" for f in froms), froms


def test_nothing_in_the_instructions_names_an_architecture() -> None:
    for instruction in dockerfile():
        found = ARCH_WORDS.search(f"{instruction.keyword} {instruction.args}")
        assert found is None, f"{found[0]!r} in {instruction.keyword} {instruction.args}"


def test_final_stage_has_no_compiler_and_installs_no_packages_from_an_index() -> None:
    for instruction in final_stage(dockerfile()):
        text = instruction.args
        assert COMPILERS.search(text) is None, text
        assert not re.search(r"\bpip\b.*\binstall\b", text), (
            f"pip install in the final stage: {text}"
        )
    copies = [i.args for i in final_stage(dockerfile()) if i.keyword == "COPY"]
    assert any(c.startswith("--from=build ") for c in copies), copies


def test_build_stage_tries_wheels_first_and_a_compiler_only_as_the_last_resort() -> None:
    runs = [i.args for i in dockerfile() if i.keyword == "RUN" and i.stage == 0]
    install = next(r for r in runs if "uvloop" in r)
    with_uvloop = install.index('--prefer-binary "${wheel}[uvloop]"')
    without_uvloop = install.index('--prefer-binary "$wheel"')
    compiler = COMPILERS.search(install)
    assert compiler is not None
    assert with_uvloop < without_uvloop < compiler.start(), install
    # The base has no compiler, so the first two attempts take wheels (and pure
    # Python sources) only; uvloop is the optional extra that may be left out.
    assert re.search(r"if ! .*\[uvloop\].*; then .* if ! .*; then", install)


def test_entrypoint_runs_the_agent_under_an_init_that_forwards_signals() -> None:
    final = {i.keyword: i.args for i in final_stage(dockerfile())}
    entrypoint = exec_form(final["ENTRYPOINT"])
    assert entrypoint[:3] == ["tini", "--", "shoal-agent"], entrypoint
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert "tini" in next(
        i.args for i in final_stage(dockerfile()) if i.keyword == "RUN" and "tini" in i.args
    )


def test_healthcheck_asks_the_agent_whether_it_is_connected() -> None:
    final = {i.keyword: i.args for i in final_stage(dockerfile())}
    options, _, command = final["HEALTHCHECK"].partition("CMD ")
    assert exec_form(command) == ["shoal-agent", "--check-health"]
    timing = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    assert set(timing) >= {"interval", "timeout", "start-period", "retries"}, options


def test_state_volume_and_health_file_are_wired_together() -> None:
    env = image_env()
    volumes = [i.args for i in final_stage(dockerfile()) if i.keyword == "VOLUME"]
    assert volumes == [env["SHOAL_STATE_DIR"]] == ["/var/lib/shoal"]
    assert Path(env["SHOAL_HEALTH_FILE"]).parent == Path(env["SHOAL_STATE_DIR"])
    # docker stop's default grace covers the agent's own shutdown grace.
    assert float(env["SHOAL_SHUTDOWN_GRACE"]) < DOCKER_STOP_TIMEOUT
    assert "/opt/shoal/bin" in env["PATH"]


def test_build_context_holds_only_the_package_sources() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything, then name what the build needs"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "protocol", "agent", "controller", "shoal"}
    copied = set()
    for instruction in dockerfile():
        if instruction.keyword == "COPY" and not instruction.args.startswith("--from"):
            copied.update(s.rstrip("/") for s in instruction.args.split()[:-1])
    assert copied == included
    # The wheel is pure Python: nothing in the packages needs a compiler.
    for package in ("protocol", "agent", "controller"):
        for path in (ROOT / package).rglob("*"):
            assert path.suffix not in {".c", ".pyx", ".cpp", ".rs", ".so"}, path


def agent_env_names() -> set[str]:
    """Every environment variable ``shoal-agent`` reads."""
    names = {
        p.envvar for p in typer.main.get_command(agent_app).params if isinstance(p.envvar, str)
    }
    for field in AgentSettings.model_fields.values():
        alias = field.validation_alias
        names.update(c for c in getattr(alias, "choices", []) if isinstance(c, str))
    return names


def shipped_env() -> dict[str, dict[str, str]]:
    """Agent settings set by the Dockerfile, the compose files and the systemd files."""
    found = {"Dockerfile": image_env()}
    for name in ("dev.yml", "agent.yml"):
        doc = yaml.safe_load((COMPOSE / name).read_text())
        environment = doc["services"]["agent"]["environment"]
        found[name] = {k: str(v) for k, v in environment.items()}
    env_file = (COMPOSE / "systemd/shoal-agent.env").read_text()
    found["shoal-agent.env"] = dict(re.findall(r"(?m)^#? ?([A-Z][A-Z0-9_]+)=(\S*)$", env_file))
    unit = (COMPOSE / "systemd/shoal-agent.service").read_text()
    found["shoal-agent.service"] = dict(
        pair.split("=", 1)
        for line in re.findall(r"(?m)^Environment=(.*)$", unit)
        for pair in line.split()
    )
    return found


def test_shipped_files_set_only_settings_the_agent_reads() -> None:
    known = agent_env_names()
    for where, env in shipped_env().items():
        ours = {k for k in env if k.startswith(("SHOAL_", "NATS_", "DOCKER_"))}
        assert ours, where
        assert ours <= known, f"{where}: the agent reads no {sorted(ours - known)}"


# --------------------------------------------------------------------------- the real agent


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir("shoal-pkg-")
    try:
        yield path
    finally:
        remove_tree(path)


def agent_script() -> str:
    beside = Path(sys.executable).parent / "shoal-agent"
    found = str(beside) if beside.exists() else shutil.which("shoal-agent")
    assert found, "shoal-agent is not installed"
    return found


def container_env(workdir: Path) -> dict[str, str]:
    """The image's ENV with its paths moved under ``workdir``, PATH untouched."""
    env = {k: v for k, v in image_env().items() if k != "PATH"}
    moved = {k: v.replace("/var/lib/shoal", str(workdir / "state")) for k, v in env.items()}
    return {**os.environ, **moved}


@pytest.mark.nats
def test_healthcheck_command_follows_the_agent_connection(
    nats_server: NatsServer, keys: Keys, workdir: Path
) -> None:
    env = container_env(workdir)
    final = {i.keyword: i.args for i in final_stage(dockerfile())}
    check = [agent_script(), *exec_form(final["HEALTHCHECK"].partition("CMD ")[2])[1:]]

    def healthy() -> subprocess.CompletedProcess[str]:
        return subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)

    assert healthy().returncode == 1  # no health file yet
    agent = subprocess.Popen(
        [agent_script(), "--host-id", "pkg-health", "--docker-host", "unix:///nonexistent.sock"],
        env={**env, "NATS_URL": nats_server.url, "SHOAL_TRUST": str(keys.trust)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def passing() -> subprocess.CompletedProcess[str] | None:
            result = healthy()
            return result if result.returncode == 0 else None

        result = poll("the health check to pass", passing)
        assert "pkg-health connected" in result.stdout
        assert Path(env["SHOAL_HEALTH_FILE"]).is_file()
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=DOCKER_STOP_TIMEOUT) == 0
    result = healthy()
    assert result.returncode == 1 and "leaving" in result.stderr, result


def pid1_available() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare (util-linux)"
    if os.geteuid() != 0:
        return "a new PID namespace needs root"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10
    )
    return None if probe.returncode == 0 else f"unshare --pid fails here: {probe.stderr!r}"


def child_pid(parent: int, deadline: float = 10.0) -> int:
    def first_child() -> int | None:
        children = Path(f"/proc/{parent}/task/{parent}/children")
        pids = children.read_text().split() if children.exists() else []
        return int(pids[0]) if pids else None

    return poll(f"a child of process {parent}", first_child, deadline, interval=0.05)


@pytest.mark.nats
@pytest.mark.parametrize("init", ["entrypoint", "agent-alone"])
def test_agent_as_pid_1_stops_cleanly_on_sigterm(
    init: str, nats_server: NatsServer, keys: Keys, workdir: Path
) -> None:
    """As ``docker stop`` does it: SIGTERM to PID 1 of the container's PID namespace,
    which is the ENTRYPOINT's init (or the agent itself, run without one)."""
    require(nats_available())
    require(pid1_available())
    final = {i.keyword: i.args for i in final_stage(dockerfile())}
    entrypoint = exec_form(final["ENTRYPOINT"])
    if init == "entrypoint":
        require(None if shutil.which(entrypoint[0]) else f"no {entrypoint[0]} (apt-get install it)")
        argv = [shutil.which(entrypoint[0]) or "", *entrypoint[1:-1], agent_script()]
    else:
        argv = [agent_script()]
    host_id = f"pkg-pid1-{init}"
    argv += ["--host-id", host_id, "--docker-host", "unix:///nonexistent.sock"]
    log = workdir / "agent.log"
    with log.open("wb") as out:
        unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", *argv],
            env={
                **container_env(workdir),
                "NATS_URL": nats_server.url,
                "SHOAL_TRUST": str(keys.trust),
            },
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        pid1 = child_pid(unshare.pid)
        status = Path(f"/proc/{pid1}/status").read_text()
        assert re.search(r"(?m)^NSpid:\s+\d+\s+1$", status), "not PID 1 of its namespace"
        poll(
            f"agent {host_id} to answer a ping",
            lambda: asyncio.run(ping_host(nats_server.url, host_id, timeout=0.5)),
            abort=lambda: None if unshare.poll() is None else "the agent exited",
            context=log.read_text,
        )
        started = time.monotonic()
        os.kill(pid1, signal.SIGTERM)
        code = unshare.wait(timeout=DOCKER_STOP_TIMEOUT)
        assert time.monotonic() - started < DOCKER_STOP_TIMEOUT
        assert code == 0, log.read_text()
        assert f"agent {host_id} stopped" in log.read_text()
    finally:
        if unshare.poll() is None:
            os.killpg(unshare.pid, signal.SIGKILL)
            unshare.wait(timeout=10)


# --------------------------------------------------------------------------- compose, NATS, systemd


def compose_config(
    *files: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    require(None if binary else "no docker-compose (apt-get install docker-compose)")
    assert binary is not None
    argv = [binary, "--project-directory", str(files[0].parent)]
    for file in files:
        argv += ["-f", str(file)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "SHOAL_"))}
    return subprocess.run(
        [*argv, "config"],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_compose_file_is_read_by_compose_v1() -> None:
    result = compose_config(COMPOSE / "dev.yml")
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(result.stdout)
    nats, agent = doc["services"]["nats"], doc["services"]["agent"]
    assert "-js" in nats["command"]
    assert f"{COMPOSE}/nats/single.conf:/etc/nats/shoal.conf:ro" in nats["volumes"]
    assert agent["build"]["context"] == str(ROOT)
    assert agent["environment"]["NATS_URL"] == "nats://nats:4222"
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" in agent["volumes"]
    assert "agent-state:/var/lib/shoal:rw" in agent["volumes"]
    assert agent["healthcheck"]["test"] == ["CMD", "shoal-agent", "--check-health"]


def test_fleet_agent_compose_file_needs_its_nats_and_host_id() -> None:
    missing = compose_config(COMPOSE / "agent.yml")
    assert missing.returncode != 0 and "NATS_URL" in missing.stderr
    result = compose_config(
        COMPOSE / "agent.yml",
        env={"NATS_URL": "nats://hub.example.com:4222", "SHOAL_HOST_ID": "web-1"},
    )
    assert result.returncode == 0, result.stderr
    agent = yaml.safe_load(result.stdout)["services"]["agent"]
    env = agent["environment"]
    assert env["NATS_URL"] == "nats://hub.example.com:4222" and env["SHOAL_HOST_ID"] == "web-1"
    assert env["NATS_NKEY"] == "/etc/shoal/agent.nk"
    assert {env["SHOAL_TRUST"], env["SHOAL_POLICY"]} <= {
        f"/etc/shoal/{n}" for n in ("trust.toml", "policy.toml")
    }
    assert "/etc/shoal:/etc/shoal:ro" in agent["volumes"]
    assert agent["restart"] == "unless-stopped"
    assert agent["healthcheck"]["test"] == ["CMD", "shoal-agent", "--check-health"]
    assert "build" not in agent, "hosts of a fleet pull the image"


def test_cluster_compose_file_is_read_by_compose_v1() -> None:
    result = compose_config(COMPOSE / "nats/cluster/compose.yml")
    assert result.returncode == 0, result.stderr
    assert sorted(yaml.safe_load(result.stdout)["services"]) == ["n1", "n2", "n3"]


NATS_CONFIGS = [
    "nats/single.conf",
    "nats/cluster/n1.conf",
    "nats/cluster/n2.conf",
    "nats/cluster/n3.conf",
    "nats/leaf/hub.conf",
    "nats/leaf/leaf.conf",
]


@pytest.mark.nats
@pytest.mark.parametrize("name", NATS_CONFIGS)
def test_nats_config_is_valid(name: str) -> None:
    require(nats_available())
    binary = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    result = subprocess.run(
        [binary, "-t", "-c", str(COMPOSE / name)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_systemd_unit(workdir: Path) -> None:
    unit = (COMPOSE / "systemd/shoal-agent.service").read_text()
    settings = dict(re.findall(r"(?m)^([A-Za-z]+)=(.*)$", unit))
    assert settings["ExecStart"] == "/opt/shoal/current/bin/shoal-agent"
    assert settings["EnvironmentFile"] == "/etc/shoal/agent.env"
    assert settings["Restart"] == "on-failure" and float(settings["RestartSec"]) > 0
    # Self-upgrade (agent/venvs.py): exit 75 restarts, /opt/shoal is writable, and a
    # version that cannot start is put back before ExecStart (tests/integration/
    # test_venv_upgrade.py runs that rule).
    assert settings["RestartForceExitStatus"] == settings["SuccessExitStatus"] == str(RESTART_EXIT)
    assert settings["ReadWritePaths"] == "/opt/shoal"
    assert settings["ExecStartPre"].startswith("-/bin/sh -c 'cd /opt/shoal ")
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["StateDirectory"] == "shoal"
    assert "SHOAL_STATE_DIR=/var/lib/shoal" in unit
    assert set(settings["After"].split()) >= {"docker.service", "network-online.target"}
    assert settings["Wants"] == "network-online.target"
    # Room for the agent's default 20-second shutdown grace.
    grace = AgentSettings.model_fields["shutdown_grace"].default
    assert float(settings["TimeoutStopSec"]) > grace
    binary = shutil.which("systemd-analyze")
    require(
        None if binary else "no systemd-analyze to verify the unit with (apt-get install systemd)"
    )
    assert binary is not None
    # verify checks that ExecStart exists: point it at this machine's shoal-agent.
    copy = workdir / "shoal-agent.service"
    copy.write_text(unit.replace(settings["ExecStart"], agent_script()))
    result = subprocess.run(
        [binary, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=workdir
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_serve_unit_and_compose_file(workdir: Path) -> None:
    unit = (COMPOSE / "systemd/shoal-serve.service").read_text()
    settings = dict(re.findall(r"(?m)^([A-Za-z]+)=(.*)$", unit))
    assert settings["ExecStart"] == "/opt/shoal/.venv/bin/shoal serve"
    assert settings["EnvironmentFile"] == "/etc/shoal/serve.env"
    assert settings["Restart"] == "on-failure" and settings["KillSignal"] == "SIGTERM"
    env = dict(
        re.findall(
            r"(?m)^([A-Z][A-Z0-9_]+)=(\S*)$", (COMPOSE / "systemd/shoal-serve.env").read_text()
        )
    )
    assert {"NATS_URL", "SHOAL_KEY"} <= set(env)
    doc = yaml.safe_load((COMPOSE / "serve.yml").read_text())
    service = doc["services"]["serve"]
    assert service["entrypoint"] == ["tini", "--", "shoal", "serve"]
    assert service["environment"]["SHOAL_KEY"] == "/etc/shoal/serve.nk"
    binary = shutil.which("systemd-analyze")
    require(
        None if binary else "no systemd-analyze to verify the unit with (apt-get install systemd)"
    )
    assert binary is not None
    shoal = Path(agent_script()).with_name("shoal")
    copy = workdir / "shoal-serve.service"
    copy.write_text(unit.replace("/opt/shoal/.venv/bin/shoal", str(shoal)))
    result = subprocess.run(
        [binary, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=workdir
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_dev_init_script_writes_a_trust_file_for_the_users_key(workdir: Path) -> None:
    """compose/dev-init.sh on a machine whose user has no key yet, run twice."""
    (workdir / "compose").mkdir()
    script = shutil.copy(COMPOSE / "dev-init.sh", workdir / "compose" / "dev-init.sh")
    shoal = Path(sys.executable).parent / "shoal"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "NATS_"))},
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "SHOAL": str(shoal) if shoal.exists() else "shoal",
    }
    for _ in range(2):
        result = subprocess.run(
            ["sh", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    keys = json.loads(
        subprocess.run(
            [env["SHOAL"], "keys", "list", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )["keys"]
    assert len(keys) == 1 and keys[0]["default"], keys
    trust = (workdir / "compose" / "dev-secrets" / "trust.toml").read_text()
    assert f'key = "{keys[0]["public_key"]}"' in trust and 'role = "admin"' in trust

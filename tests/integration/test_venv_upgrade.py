"""An agent under systemd upgrades itself into a new venv (issue #19, ``shoal agents upgrade``).

The agent is installed as compose/systemd/shoal-agent.service expects: one venv per
version under ``<root>/venvs`` and a ``<root>/current`` link, made here offline from the
session's wheelhouse; the versions it upgrades to are the project's own wheel rebuilt
under another version (one of them unable to start), found by pip through the
``PIP_FIND_LINKS``/``PIP_NO_INDEX`` settings an operator puts in the unit's environment.

There is no systemd to run the unit in these containers, so :class:`ServiceManager`
plays its part from the unit file itself: it runs the unit's ``ExecStartPre`` and
``ExecStart`` (``/opt/shoal`` swapped for the test's root) and restarts by the unit's
``Restart``, ``RestartPreventExitStatus`` and ``RestartForceExitStatus``, after one
second instead of ``RestartSec`` to keep the test short. ``systemd-analyze verify``
checks the same unit in tests/integration/test_packaging.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.venvs import RESTART_EXIT, Layout
from tests.integration.agents import (
    AgentProcess,
    Answers,
    CliResult,
    _script,
    ping_host,
    run_shoal,
)
from tests.integration.conftest import Keys
from tests.integration.wheels import ROOT, build_variant, project_version
from tests.poll import poll
from tests.stack import DockerEngine, NatsServer, remove_tree, short_tempdir

pytestmark = [pytest.mark.engine, pytest.mark.nats]

UNIT = ROOT / "compose/systemd/shoal-agent.service"
NEXT_VERSION = "0.1.1.dev7"
BROKEN_VERSION = "0.1.1.dev8"
"""Installs and reports its version, but its agent cannot start."""
RESTART_SEC = 1.0
"""Seconds between an exit and the next start (the unit says RestartSec=5)."""
INSTALL_TIMEOUT = 300


@dataclass(frozen=True)
class Unit:
    """What the service manager needs of compose/systemd/shoal-agent.service."""

    pre: list[str]
    start: list[str]
    restart: str
    success: frozenset[int]
    prevent: frozenset[int]
    force: frozenset[int]

    @classmethod
    def read(cls, root: Path) -> Unit:
        settings: dict[str, str] = {}
        for line in UNIT.read_text(encoding="utf-8").splitlines():
            match = re.fullmatch(r"([A-Za-z]+)=(.*)", line)
            if match:
                settings[match.group(1)] = match.group(2)

        def command(value: str) -> list[str]:
            # systemd's own escapes ($$ and %%), then its shell-like word splitting.
            value = value.lstrip("-").replace("/opt/shoal", str(root))
            return shlex.split(value.replace("%%", "%").replace("$$", "$"))

        def codes(name: str) -> frozenset[int]:
            return frozenset(int(code) for code in settings.get(name, "").split())

        return cls(
            pre=command(settings["ExecStartPre"]),
            start=command(settings["ExecStart"]),
            restart=settings["Restart"],
            success=codes("SuccessExitStatus"),
            prevent=codes("RestartPreventExitStatus"),
            force=codes("RestartForceExitStatus"),
        )

    def restarts_after(self, code: int) -> bool:
        """systemd's rule: prevented codes do not restart, forced ones do, then Restart=."""
        if code in self.prevent:
            return False
        if code in self.force:
            return True
        clean = code == 0 or code in self.success or code == -signal.SIGTERM
        return self.restart == "always" or (self.restart == "on-failure" and not clean)


@dataclass
class Start:
    venv: str
    """The venv ``current`` pointed at when it started."""
    code: int | None = None


@dataclass
class ServiceManager:
    """Runs the agent as the unit says, in a thread, until :meth:`stop`."""

    root: Path
    args: list[str]
    env: dict[str, str]
    log_path: Path
    unit: Unit = field(init=False)
    starts: list[Start] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.unit = Unit.read(self.root)

    def __enter__(self) -> ServiceManager:
        self._thread = threading.Thread(target=self._run, daemon=True, name="service-manager")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self.log_path.open("ab") as log:
                subprocess.run(
                    self.unit.pre, stdout=log, stderr=subprocess.STDOUT, env=self.env, check=False
                )
                start = Start(str((self.root / "current").readlink()))
                self.starts.append(start)
                self._process = subprocess.Popen(
                    [*self.unit.start, *self.args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,
                )
                start.code = self._process.wait()
            if not self.unit.restarts_after(start.code):
                return
            self._stopping.wait(RESTART_SEC)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def codes(self) -> list[int | None]:
        return [s.code for s in self.starts]


@pytest.fixture(scope="module")
def versions(wheelhouse: Path) -> Iterator[Path]:
    """A directory of the project's wheel as NEXT_VERSION, and as BROKEN_VERSION."""
    workdir = short_tempdir("shoal-ver-")
    try:
        build_variant(workdir, wheelhouse, NEXT_VERSION)
        marker = '"""Probe the engine, connect to NATS, refuse a duplicate host id, subscribe."""\n'
        broken = (
            marker + '        raise AgentStartError("this version cannot start (a test build)")\n'
        )
        edits = {"agent/runtime.py": (marker, broken)}
        yield build_variant(workdir, wheelhouse, BROKEN_VERSION, edits)
    finally:
        remove_tree(workdir)


def pip_env(wheelhouse: Path, versions: Path) -> dict[str, str]:
    """The process environment of an agent installed as a service, pip pointed offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {
        **env,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": f"{wheelhouse} {versions}",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def installed(wheelhouse: Path, versions: Path) -> Iterator[Path]:
    """``<root>`` with venvs/<this version> and the current link, as the unit's comment says."""
    root = short_tempdir("shoal-opt-")
    version = project_version()
    venv = root / "venvs" / version
    base = getattr(sys, "_base_executable", sys.executable)
    env = pip_env(wheelhouse, versions)
    try:
        for argv in (
            [base, "-m", "venv", str(venv)],
            [str(venv / "bin/pip"), "install", "--no-input", f"shoal[uvloop]=={version}"],
        ):
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT, check=False
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (root / "current").symlink_to(Path("venvs") / version)
        yield root
    finally:
        remove_tree(root)


def agent_version(nats_server: NatsServer, host_id: str) -> dict[str, Any]:
    result = run_shoal("agents", "--json", "-H", host_id, server=nats_server.url)
    assert result.code == 0, result.stderr
    (record,) = result.json()["agents"]
    facts: dict[str, Any] = record["facts"]
    return facts


def upgrade(nats_server: NatsServer, host: str, version: str, *args: str) -> CliResult:
    return run_shoal(
        "agents", "upgrade", "-H", host, "--version", version, "--yes", "--json", *args,
        server=nats_server.url, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip


def test_an_agent_under_systemd_upgrades_into_a_new_venv_and_a_broken_version_is_put_back(
    nats_server: NatsServer,
    engines: list[DockerEngine],
    keys: Keys,
    wheelhouse: Path,
    versions: Path,
    installed: Path,
    test_label: str,
) -> None:
    root, old = installed, project_version()
    host = f"svc-{test_label}"[:60].strip("-")
    # The test agents' own arguments, after the script: the unit gets them from its env.
    agent = AgentProcess(
        root, server=nats_server.url, host_id=host, docker_host=engines[0].host, trust=keys.trust
    )
    args = agent.argv()[len(_script("shoal-agent")) :]
    manager = ServiceManager(root, args, pip_env(wheelhouse, versions), root / "agent.log")

    def answers() -> bool:
        return asyncio.run(ping_host(nats_server.url, host, timeout=0.5)) is not None

    try:
        with manager:
            poll("the agent to answer", answers, 30, context=manager.log)
            assert agent_version(nats_server, host)["agent_version"] == old

            # A dry run changes nothing; a version the index does not have is refused
            # before anything changes, and the agent never restarts for it.
            dry = upgrade(nats_server, host, NEXT_VERSION, "--dry-run")
            assert dry.code == 0, dry.stdout + dry.stderr
            (outcome,) = dry.json()["hosts"]
            assert outcome["outcome"] == "dry_run" and outcome["mode"] == "process", outcome
            missing = upgrade(nats_server, host, "9.9.9")
            assert missing.code == 1, missing.stdout + missing.stderr
            (outcome,) = missing.json()["hosts"]
            assert outcome["outcome"] == "failed", outcome
            assert outcome["reason"].startswith("upgrade_failed: pip install"), outcome
            assert sorted(p.name for p in (root / "venvs").iterdir()) == [old]
            assert str((root / "current").readlink()) == f"venvs/{old}"
            assert manager.codes() == [None], "it restarted"

            # The upgrade: a new venv beside the old one, and a restart into it.
            with Answers(nats_server.url, host) as pings:
                result = upgrade(nats_server, host, NEXT_VERSION)
            assert result.code == 0, result.stdout + result.stderr + manager.log()
            (outcome,) = result.json()["hosts"]
            assert outcome["outcome"] == "upgraded" and outcome["mode"] == "process", outcome
            assert (outcome["old_version"], outcome["version"]) == (old, NEXT_VERSION)
            assert f"{host} | upgraded to {NEXT_VERSION}" in result.stderr
            assert pings.times and pings.longest_gap() < 30, pings.longest_gap()
            assert str((root / "current").readlink()) == f"venvs/{NEXT_VERSION}"
            assert manager.codes()[0] == RESTART_EXIT and len(manager.starts) == 2
            assert manager.starts[1].venv == f"venvs/{NEXT_VERSION}"
            poll("the upgrade to be committed", lambda: not (root / "upgrade.env").exists(), 10)
            assert sorted(p.name for p in (root / "venvs").iterdir()) == sorted([old, NEXT_VERSION])
            facts = agent_version(nats_server, host)
            assert facts["agent_version"] == NEXT_VERSION and facts["upgrade_failed"] is None

            # A version whose agent cannot start: it is retried until the deadline, then
            # the unit puts the previous venv back, and that agent says why.
            broken = upgrade(nats_server, host, BROKEN_VERSION, "--deadline", "12")
            assert broken.code == 1, broken.stdout + broken.stderr + manager.log()
            (outcome,) = broken.json()["hosts"]
            assert outcome["outcome"] == "rolled_back", outcome
            assert outcome["version"] == NEXT_VERSION, outcome
            assert f"upgrade to {BROKEN_VERSION} rolled back" in outcome["reason"], outcome
            assert str((root / "current").readlink()) == f"venvs/{NEXT_VERSION}"
            # Exit 1 each time; the last try may find the deadline passed itself (75),
            # else the unit's ExecStartPre puts the old venv back before it.
            tried = [s.code for s in manager.starts if s.venv == f"venvs/{BROKEN_VERSION}"]
            assert tried[0] == 1 and set(tried) <= {1, RESTART_EXIT}, manager.starts
            assert "this version cannot start" in manager.log()
            assert not (root / "upgrade.env").exists() and (root / "upgrade-failed.env").exists()
            facts = agent_version(nats_server, host)
            assert facts["agent_version"] == NEXT_VERSION
            assert BROKEN_VERSION in facts["upgrade_failed"]

            # Back to the first version: its venv is reused as it is, and once committed
            # the venvs other than the running one and the way back are removed.
            made = (root / "venvs" / old / "pyvenv.cfg").stat().st_mtime_ns
            back = upgrade(nats_server, host, old)
            assert back.code == 0, back.stdout + back.stderr + manager.log()
            (outcome,) = back.json()["hosts"]
            assert outcome["outcome"] == "upgraded" and outcome["version"] == old, outcome
            poll("the return to be committed", lambda: not (root / "upgrade.env").exists(), 10)
            assert sorted(p.name for p in (root / "venvs").iterdir()) == sorted([old, NEXT_VERSION])
            assert (root / "venvs" / old / "pyvenv.cfg").stat().st_mtime_ns == made
            assert agent_version(nats_server, host)["upgrade_failed"] is None
    finally:
        manager.stop()
        run_shoal("agents", "forget", host, server=nats_server.url)
        with contextlib.suppress(OSError):
            print(manager.log())


def test_the_units_start_check_puts_the_previous_venv_back_only_past_the_deadline(
    tmp_path: Path,
) -> None:
    """The ExecStartPre rule alone, for a version that could not even import."""
    root = tmp_path / "opt"
    for name in ("0.1.0", "0.2.0"):
        (root / "venvs" / name / "bin").mkdir(parents=True)
    (root / "current").symlink_to("venvs/0.2.0")
    unit = Unit.read(root)

    def pre(deadline: int, source: str = "0.1.0") -> None:
        (root / "upgrade.env").write_text(
            f"SHOAL_UPGRADE_FROM={source}\nSHOAL_UPGRADE_TO=0.2.0\n"
            f"SHOAL_UPGRADE_VERSION=0.2.0\nSHOAL_UPGRADE_DEADLINE={deadline}\n"
        )
        done = subprocess.run(unit.pre, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0 and not done.stderr, done.stderr

    pre(int(time.time()) + 600)  # still on trial: nothing changes
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    assert (root / "upgrade.env").exists() and not (root / "upgrade-failed.env").exists()
    pre(int(time.time()) - 1, source="../../etc")  # not a plain name: left alone
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    (root / "venvs" / "0.1.0" / "bin").rename(root / "venvs" / "0.1.0" / "gone")
    pre(int(time.time()) - 1)  # the venv to go back to is gone: left alone
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    (root / "venvs" / "0.1.0" / "gone").rename(root / "venvs" / "0.1.0" / "bin")
    (root / "upgrade.env").write_text("SHOAL_UPGRADE_FROM=0.1.0\n$(touch pwned)\n")
    done = subprocess.run(unit.pre, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and not (root / "pwned").exists()  # read, never run
    pre(int(time.time()) - 1)  # past the deadline: back, and why
    assert str((root / "current").readlink()) == "venvs/0.1.0"
    assert not (root / "upgrade.env").exists()
    failed = (root / "upgrade-failed.env").read_text()
    assert "SHOAL_UPGRADE_VERSION=0.2.0" in failed and "the unit put 0.1.0 back" in failed
    layout = Layout(root, "0.1.0")
    reason = layout.last_failure()
    assert reason is not None and reason.startswith("upgrade to 0.2.0 rolled back: the new agent")
    assert unit.restarts_after(RESTART_EXIT) and unit.restarts_after(1)
    assert not unit.restarts_after(2) and not unit.restarts_after(0)

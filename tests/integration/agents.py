"""Real ``shoal-agent`` processes for integration tests, and a CLI runner."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors

from shoal.protocol import Request, Role, Signer, Subjects, Target, Verb
from shoal.protocol.trust import TrustEntry, render_trust
from tests.poll import poll

READY_DEADLINE = 15.0
STOP_DEADLINE = 10.0
HEARTBEAT = 1.0


def _script(name: str) -> list[str]:
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"shoal": "shoal.controller", "shoal-agent": "shoal.agent"}[name]
    return [sys.executable, "-m", module]


async def ping_host(url: str, host_id: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """One ping straight over NATS; the reply document, or None if nobody answered."""
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        request = Request(verb=Verb.PING, target=Target(host=host_id))
        msg = await nc.request(
            Subjects().host(host_id, Verb.PING),
            request.model_dump_json().encode(),
            timeout=timeout,
        )
        reply: dict[str, Any] = json.loads(msg.data)
        return reply
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return None
    finally:
        await nc.close()


class Answers:
    """Pings a host twice a second in a thread: when it answered (unsigned, so with an
    ``unauthorized`` error, but an answer of the agent all the same)."""

    def __init__(self, url: str, host_id: str) -> None:
        self.url, self.host_id = url, host_id
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            reply = asyncio.run(ping_host(self.url, self.host_id, timeout=0.5))
            if reply is not None and reply.get("host") == self.host_id:
                self.times.append(time.monotonic())
            self._stop.wait(0.5)

    def __enter__(self) -> Answers:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.monotonic()
        self._stop.set()
        self._thread.join(10)

    def longest_gap(self) -> float:
        stamps = [self.started, *self.times, self.ended]
        return max(b - a for a, b in itertools.pairwise(stamps))


class AgentProcess:
    """One ``shoal-agent`` process; stopped by its own pid."""

    ready_deadline: float = READY_DEADLINE
    """Seconds :meth:`wait_ready` allows the agent to answer a ping."""

    def __init__(
        self,
        workdir: Path,
        *,
        server: str,
        host_id: str,
        docker_host: str,
        labels: dict[str, str] | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        trust: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.host_id = host_id
        self.docker_host = docker_host
        self.labels = labels or {}
        self.extra = extra or []
        self.env = env or {}
        self.trust = trust
        self.log_path = workdir / f"agent-{host_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            *_script("shoal-agent"),
            "--server",
            self.server,
            "--host-id",
            self.host_id,
            "--docker-host",
            self.docker_host,
            "--heartbeat-interval",
            str(HEARTBEAT),
            "--log-level",
            "debug",
        ]
        for key, value in self.labels.items():
            argv += ["--label", f"{key}={value}"]
        argv += ["--trust", str(self.trust)] if self.trust is not None else ["--insecure"]
        argv += ["--state-dir", str(self.workdir / "state")]
        return argv + self.extra

    def start(self, *, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**self.base_environment(), "PYTHONUNBUFFERED": "1", **self.env},
            )
        if wait:
            self.wait_ready()

    def base_environment(self) -> dict[str, str]:
        """The environment the agent starts from (``env`` is added on top)."""
        return dict(os.environ)

    def wait_ready(self) -> None:
        def exited() -> str | None:
            if self.process is None or self.process.poll() is None:
                return None
            return f"it exited with {self.process.returncode}"

        try:
            poll(
                f"agent {self.host_id} to answer a ping",
                lambda: asyncio.run(ping_host(self.server, self.host_id, timeout=0.5)),
                self.ready_deadline,
                abort=exited,
                context=self.log,
                failure=RuntimeError,
            )
        except RuntimeError:
            self.stop()
            raise

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the agent gets no chance to say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(STOP_DEADLINE)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after a deadline. The exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_DEADLINE)
        return process.returncode


@dataclass(frozen=True)
class SessionKey:
    """A controller signing key made for the test session."""

    name: str
    signer: Signer
    path: Path


def make_key(directory: Path, name: str) -> SessionKey:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = Signer.generate(name)
    path = directory / f"{name}.nk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(signer.seed)
    return SessionKey(name, signer, path)


def write_trust(path: Path, keys: list[tuple[SessionKey, Role]]) -> Path:
    path.write_text(
        render_trust([TrustEntry(name=k.name, key=k.signer.public_key, role=r) for k, r in keys])
    )
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_shoal(
    *args: str, server: str, timeout: float = 60.0, unset: tuple[str, ...] = (), **env: str
) -> CliResult:
    """Run the real ``shoal`` console script (``unset`` removes environment variables)."""
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    completed = subprocess.run(
        [*_script("shoal"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environment, "NATS_URL": server, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)

"""Real ``shoal-agent`` processes for integration tests, and a CLI runner."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors

from protocol import Request, Subjects, Target, Verb

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
    module = {"shoal": "controller", "shoal-agent": "agent"}[name]
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


class AgentProcess:
    """One ``shoal-agent`` process; stopped by its own pid."""

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
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.host_id = host_id
        self.docker_host = docker_host
        self.labels = labels or {}
        self.extra = extra or []
        self.env = env or {}
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
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"agent {self.host_id} exited with {self.process.returncode}:\n{self.log()}"
                )
            if asyncio.run(ping_host(self.server, self.host_id, timeout=0.5)) is not None:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"agent {self.host_id} not ready in {READY_DEADLINE}s:\n{self.log()}")

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


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_shoal(*args: str, server: str, timeout: float = 60.0, **env: str) -> CliResult:
    """Run the real ``shoal`` console script."""
    completed = subprocess.run(
        [*_script("shoal"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NATS_URL": server, **env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)

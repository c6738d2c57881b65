"""Real parts for benchmarks 2 to 4: a nats-server, dockerd engines, shoal-agent processes.

The nats-server and engines come from ``tests.stack`` (stopped by their own pid,
their directories removed). Agents are real ``shoal-agent`` processes, one per
engine, each stopped with SIGTERM by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
import time

from bench.common import BenchKey, log, tool
from shoal.controller.fleet import Fleet
from shoal.controller.transport import Connection, Message
from shoal.protocol import NatsOptions, Subjects
from tests.stack import (
    BUSYBOX_IMAGE,
    DockerEngine,
    NatsServer,
    build_busybox_image,
    docker_available,
    remove_labelled,
    remove_tree,
    short_tempdir,
    start_all,
)

BENCH_LABEL = "shoal-bench"
AGENT_STOP_DEADLINE = 30.0


class AgentProcess:
    """One ``shoal-agent`` process serving one engine."""

    def __init__(
        self,
        stack: RealStack,
        engine: DockerEngine,
        host_id: str,
        prefix: str,
        heartbeat_interval: float | None,
    ) -> None:
        self.host_id = host_id
        self.prefix = prefix
        self.log_path = stack.workdir / "agents" / f"{prefix}-{host_id}.log"
        argv = [
            tool("shoal-agent"),
            "--server",
            stack.nats.url,
            "--host-id",
            host_id,
            "--docker-host",
            engine.host,
            "--prefix",
            prefix,
            "--label",
            "bench=real",
            "--trust",
            str(stack.key.trust_path),
            "--state-dir",
            str(stack.workdir / "agent-state"),
            "--log-level",
            "warning",
        ]
        if heartbeat_interval is not None:
            argv += ["--heartbeat-interval", str(heartbeat_interval)]
        self.argv = argv
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.spawned_at = time.perf_counter()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM by pid (the agent says goodbye and exits 0); SIGKILL past the deadline."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=AGENT_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ReadyWatcher:
    """Times agents from spawn to their ``started`` event on NATS (sent when ready)."""

    def __init__(self, nc: Connection, prefix: str) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self.seen: dict[str, float] = {}
        self._changed = asyncio.Event()

    async def __aenter__(self) -> ReadyWatcher:
        async def on_event(msg: Message) -> None:
            host = msg.subject.split(".")[-2]
            self.seen.setdefault(host, time.perf_counter())
            self._changed.set()

        subject = f"{self.subjects.prefix}.events.*.started"
        self._sub = await self.nc.subscribe(subject, cb=on_event)
        await self.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    async def wait(self, agents: list[AgentProcess], timeout: float = 60.0) -> list[float]:
        """Seconds from spawn to ready, per agent; raises if one is not ready in time."""
        end = time.monotonic() + timeout
        while not all(a.host_id in self.seen for a in agents):
            for agent in agents:
                if agent.process is not None and agent.process.poll() is not None:
                    raise RuntimeError(
                        f"agent {agent.host_id} exited with {agent.process.returncode}:\n"
                        f"{agent.log_tail()}"
                    )
            left = end - time.monotonic()
            if left <= 0:
                missing = [a.host_id for a in agents if a.host_id not in self.seen]
                raise RuntimeError(f"agents not ready after {timeout:.0f}s: {missing}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return [self.seen[a.host_id] - a.spawned_at for a in agents]


async def wait_online(fleet: Fleet, count: int, timeout: float = 60.0) -> None:
    """Wait until the registry shows ``count`` online agents."""
    end = time.monotonic() + timeout
    while True:
        online = sum(r.online for r in await fleet.agents())
        if online >= count:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"the registry shows {online} online agents, expected {count}")
        await asyncio.sleep(0.2)


class RealStack:
    """A nats-server and up to N dockerd engines, each with a few running containers."""

    def __init__(self, containers_per_engine: int = 3) -> None:
        self.workdir = short_tempdir("shoal-bench-")
        self.key = BenchKey.create(self.workdir / "keys")
        self.nats = NatsServer(self.workdir / "nats")
        self.engines: list[DockerEngine] = []
        self.agents: list[AgentProcess] = []
        self.containers_per_engine = containers_per_engine
        self._lock = threading.Lock()

    @staticmethod
    def unavailable() -> str | None:
        return docker_available()

    def start_nats(self) -> None:
        self.nats.start()

    def ensure_engines(self, count: int) -> list[DockerEngine]:
        """Start engines (in parallel) until there are ``count``, with containers on each."""
        self.start_nats()
        new = [
            DockerEngine(f"e{i}", self.workdir / f"e{i}") for i in range(len(self.engines), count)
        ]
        if new:
            t0 = time.perf_counter()
            self.engines.extend(new)
            start_all(new, then=self._populate)
            log(f"started {len(new)} Docker engine(s) in {time.perf_counter() - t0:.1f}s")
        return self.engines[:count]

    def _populate(self, engine: DockerEngine) -> None:
        client = engine.client()
        try:
            build_busybox_image(client)
            for index in range(self.containers_per_engine):
                client.containers.run(
                    BUSYBOX_IMAGE,
                    ["sleep", "86400"],
                    name=f"bench-{engine.name}-{index}",
                    detach=True,
                    network_mode="none",
                    labels={BENCH_LABEL: "1", "app": f"app-{index}"},
                    stop_signal="SIGKILL",
                )
        finally:
            client.close()

    def spawn_agent(
        self,
        engine: DockerEngine,
        host_id: str,
        prefix: str,
        heartbeat_interval: float | None = None,
    ) -> AgentProcess:
        agent = AgentProcess(self, engine, host_id, prefix, heartbeat_interval)
        self.agents.append(agent)
        agent.spawn()
        return agent

    def stop_agents(self, agents: list[AgentProcess] | None = None) -> None:
        targets = list(self.agents) if agents is None else agents
        threads = [threading.Thread(target=a.stop) for a in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.agents = [a for a in self.agents if a not in targets]

    def fleet(self, prefix: str, timeout: float = 30.0) -> Fleet:
        return Fleet(
            NatsOptions(servers=self.nats.url, name="shoal-bench"),
            prefix=prefix,
            timeout=timeout,
            signer=self.key.signer,
        )

    def cleanup(self) -> None:
        """Stop agents, remove containers, stop engines and NATS, remove the work dir."""
        self.stop_agents()

        def stop_engine(engine: DockerEngine) -> None:
            if engine.running:
                with contextlib.suppress(Exception):
                    client = engine.client(timeout=20)
                    try:
                        remove_labelled(client, BENCH_LABEL)
                    finally:
                        client.close()
            engine.cleanup()

        threads = [threading.Thread(target=stop_engine, args=(e,)) for e in self.engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.engines.clear()
        self.nats.cleanup()
        remove_tree(self.workdir)

"""A worker process of the simulated fleet: many real agent runtimes in one process.

Run by the fan-out benchmark as ``python -m bench.fleetsim --url URL``. Every
agent is a real :class:`agent.runtime.Agent` (its own NATS connection,
subscriptions, heartbeats into the registry stream, request validation and
replies); only its engine is :class:`bench.simengine.SimEngine`.

The parent drives the worker with JSON lines on stdin and reads JSON lines on
stdout:

* ``{"cmd": "grow", "prefix": "sim", "start": 0, "count": 250}`` starts agents
  ``sim-00000`` … ``sim-00249``; answer ``{"event": "grown", ...}``.
* ``{"cmd": "stop"}`` stops every agent (as on SIGTERM) and exits; answer
  ``{"event": "stopped", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import raise_fd_limit
from bench.simengine import SimEngine
from shoal.agent.config import AgentSettings
from shoal.agent.runtime import Agent

log = logging.getLogger("bench.fleetsim")


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url: str = args.url
        self.heartbeat_interval: float = args.heartbeat_interval
        self.concurrency: int = args.concurrency
        self.containers: int = args.containers
        self.running: int = args.running
        self.trust: Path | None = args.trust
        self.state_dir: Path | None = args.state_dir
        self.parallel = asyncio.Semaphore(args.parallel_starts)
        self.agents: list[Agent] = []

    def make_agent(self, host_id: str) -> Agent:
        settings = AgentSettings(
            servers=(self.url,),
            host_id=host_id,
            labels={"bench": "fanout", "rack": f"r{int(host_id[-5:]) % 8}"},
            heartbeat_interval=self.heartbeat_interval,
            concurrency=self.concurrency,
            shutdown_grace=2.0,
            **self.security(),
        )
        engine = SimEngine(host_id, containers=self.containers, running=self.running)
        return Agent(settings, engine=engine, version="0.1.0-bench")

    def security(self) -> dict[str, Any]:
        """Signed requests from a trusted key, as in production; else insecure mode."""
        if self.trust is None:
            return {"insecure": True, "state_dir": self.state_dir}
        return {"trust": self.trust, "state_dir": self.state_dir}

    async def _start_one(self, agent: Agent) -> str | None:
        async with self.parallel:
            try:
                await asyncio.wait_for(agent.start(), timeout=60)
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await agent.stop()
                return f"{agent.host_id}: {type(exc).__name__}: {exc}"
        return None

    async def grow(self, prefix: str, start: int, count: int) -> None:
        t0 = time.perf_counter()
        new = [self.make_agent(f"{prefix}-{i:05d}") for i in range(start, start + count)]
        outcomes = await asyncio.gather(*(self._start_one(a) for a in new))
        errors = [o for o in outcomes if o is not None]
        self.agents.extend(a for a, o in zip(new, outcomes, strict=True) if o is None)
        seconds = time.perf_counter() - t0
        # One heap holds thousands of agents here; a real agent is alone in its
        # process. Freezing what start-up made keeps full collections of this
        # shared heap (a cost of the simulation only) out of the measurements.
        gc.collect()
        gc.freeze()
        emit(
            "grown",
            total=len(self.agents),
            started=count - len(errors),
            failed=len(errors),
            errors=errors[:5],
            seconds=seconds,
        )

    async def stop(self) -> None:
        t0 = time.perf_counter()
        stopping = asyncio.Semaphore(200)

        async def stop_one(agent: Agent) -> None:
            async with stopping:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(agent.stop(), timeout=30)

        await asyncio.gather(*(stop_one(a) for a in self.agents))
        emit("stopped", count=len(self.agents), seconds=time.perf_counter() - t0)
        self.agents.clear()


async def serve(args: argparse.Namespace) -> None:
    worker = Worker(args)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit("ready", fd_limit=raise_fd_limit())
    try:
        while True:
            line = await reader.readline()
            if not line:
                break  # the parent went away: stop
            command = json.loads(line)
            if command["cmd"] == "grow":
                await worker.grow(command["prefix"], int(command["start"]), int(command["count"]))
            elif command["cmd"] == "stop":
                break
            else:
                emit("error", message=f"unknown command {command['cmd']!r}")
    finally:
        await worker.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleetsim")
    parser.add_argument("--url", required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--containers", type=int, default=5)
    parser.add_argument("--running", type=int, default=3)
    parser.add_argument("--parallel-starts", type=int, default=100)
    parser.add_argument("--trust", type=Path, default=None, help="trust file (else insecure)")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:  # as the real agent does when uvloop is installed
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()

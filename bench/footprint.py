"""Benchmark 3: the footprint of one real ``shoal-agent`` process on a real engine.

Idle resident memory, CPU over a minute of idling (heartbeats every 5 s, the
default, included), and time from start to ready. Beside them, the floor of the
agent's dependencies: a bare interpreter that imports nats, pydantic and docker, and
one that also imports the other libraries the agent must use (pydantic-settings,
typer) and Shoal's wire models (``protocol``).
"""

from __future__ import annotations

import asyncio
import compileall
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.common import (
    Table,
    cpu_seconds,
    fmt,
    log,
    median,
    pss_bytes,
    ratio,
    rss_bytes,
    run_timed,
    spread,
    thread_count,
)
from bench.realstack import AgentProcess, ReadyWatcher, RealStack
from shoal.controller.transport import Message

PREFIX = "benchfoot"
FLOOR_IMPORTS = "import nats, pydantic, docker"
MANDATED_IMPORTS = "import nats, pydantic.main, docker, pydantic_settings, typer, protocol"
"""What any agent built on the mandated libraries and Shoal's wire models holds."""
MiB = 2**20


@dataclass
class FootprintConfig:
    starts: int = 5
    idle_agents: int = 3
    idle_seconds: float = 60.0
    settle_seconds: float = 5.0


def compile_packages() -> None:
    """Write the bytecode of the agent's packages, as installing a wheel does.

    With PYTHONDONTWRITEBYTECODE set, a module edited since its last compile would
    otherwise be compiled from source at every agent start: about 0.3 MiB more and
    0.1 s slower to ready when none is compiled, none of which an installed agent pays.
    """
    import shoal.agent
    import shoal.protocol

    for package in (shoal.agent, shoal.protocol):
        for path in package.__path__:
            compileall.compile_dir(path, quiet=1)


def floor_rss(samples: int = 3, imports: str = FLOOR_IMPORTS) -> list[int]:
    """RSS of an idle interpreter that imported the agent's main dependencies."""
    values = []
    code = f"{imports}; import sys, time; print('ok', flush=True); time.sleep(120)"
    for _ in range(samples):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(1.0)
            values.append(rss_bytes(proc.pid))
        finally:
            proc.kill()
            proc.wait()
    return values


async def run(stack: RealStack, config: FootprintConfig) -> list[Table]:
    compile_packages()
    engines = stack.ensure_engines(max(1, config.idle_agents))
    fleet = stack.fleet(PREFIX)
    ready: list[float] = []
    stop_s: list[float] = []
    async with fleet:
        await fleet.init_registry()
        async with ReadyWatcher(fleet.nc, PREFIX) as watcher:
            # Start to ready, one agent at a time.
            floor_ready: list[float] = []
            for run_index in range(config.starts):
                agent = stack.spawn_agent(engines[0], f"foot-start-{run_index}", PREFIX)
                ready.extend(await watcher.wait([agent]))
                t0 = time.perf_counter()
                stack.stop_agents([agent])
                stop_s.append(time.perf_counter() - t0)
                # The floor, right after each start (interleaved, same conditions).
                floor_ready.append(run_timed([sys.executable, "-c", FLOOR_IMPORTS]).seconds)
            # Idle: several agents at once, default heartbeat interval.
            idle = [
                stack.spawn_agent(engines[i % len(engines)], f"foot-idle-{i}", PREFIX)
                for i in range(config.idle_agents)
            ]
            await watcher.wait(idle)
        beats: dict[str, int] = {a.host_id: 0 for a in idle}

        async def on_beat(msg: Message) -> None:
            host = msg.subject.rsplit(".", 1)[-1]
            if host in beats:
                beats[host] += 1

        await asyncio.sleep(config.settle_seconds)
        sub = await fleet.nc.subscribe(f"{PREFIX}.hb.*", cb=on_beat)
        log(f"footprint: {len(idle)} agents idling for {config.idle_seconds:.0f}s")
        cpu0 = {a.host_id: cpu_seconds(a.pid) for a in idle}
        t0 = time.perf_counter()
        await asyncio.sleep(config.idle_seconds)
        window = time.perf_counter() - t0
        cpu = {a.host_id: cpu_seconds(a.pid) - cpu0[a.host_id] for a in idle}
        await sub.unsubscribe()
        rss = {a.host_id: rss_bytes(a.pid) for a in idle}
        pss = {a.host_id: pss_bytes(a.pid) for a in idle}
        threads = {a.host_id: thread_count(a.pid) for a in idle}
    stack.stop_agents(idle)
    floor = floor_rss()
    mandated = floor_rss(imports=MANDATED_IMPORTS)
    return [table_for(config, ready, stop_s, idle, window, cpu, rss, pss, threads, beats,
                      floor_ready, floor, mandated)]  # fmt: skip


def table_for(
    config: FootprintConfig,
    ready: list[float],
    stop_s: list[float],
    idle: list[AgentProcess],
    window: float,
    cpu: dict[str, float],
    rss: dict[str, int],
    pss: dict[str, int | None],
    threads: dict[str, int],
    beats: dict[str, int],
    floor_ready: list[float],
    floor: list[int],
    mandated: list[int],
) -> Table:
    table = Table(
        "footprint",
        "3. Agent footprint (one real shoal-agent process per engine)",
        ["measure", "median", "runs", "floor: python -c 'import nats, pydantic, docker'", "ratio"],
    )
    rss_mib = [v / MiB for v in rss.values()]
    pss_mib = [v / MiB for v in pss.values() if v is not None]
    floor_mib = [v / MiB for v in floor]
    mandated_mib = [v / MiB for v in mandated]
    cpu_values = list(cpu.values())
    percent = [c / window * 100 for c in cpu_values]
    table.add(
        "start to ready (s)",
        fmt(median(ready)),
        spread(ready),
        fmt(median(floor_ready)) + " (import time)",
        ratio(median(ready), median(floor_ready)),
    )
    table.add(
        "idle resident memory, RSS (MiB)",
        fmt(median(rss_mib)),
        spread(rss_mib),
        fmt(median(floor_mib)),
        ratio(median(rss_mib), median(floor_mib)),
    )
    table.add(
        "RSS floor with pydantic-settings, typer and protocol (MiB)",
        fmt(median(mandated_mib)),
        spread(mandated_mib),
        "-",
        ratio(median(rss_mib), median(mandated_mib)),
    )
    table.add(
        "idle proportional memory, PSS (MiB)", fmt(median(pss_mib)), spread(pss_mib), "-", "-"
    )
    table.add(
        f"CPU over {window:.0f} s idle (s)",
        fmt(median(cpu_values)),
        spread(cpu_values),
        "-",
        "-",
    )
    table.add("CPU idle (% of one core)", fmt(median(percent)), spread(percent), "-", "-")
    table.add(
        "heartbeats in the window",
        fmt(median([float(b) for b in beats.values()])),
        spread([float(b) for b in beats.values()]),
        "-",
        "-",
    )
    thread_values = [float(t) for t in threads.values()]
    table.add("threads", fmt(median(thread_values)), spread(thread_values), "-", "-")
    table.add("stop: SIGTERM to exit (s)", fmt(median(stop_s)), spread(stop_s), "-", "-")
    table.notes += [
        f"Start to ready: from spawning `shoal-agent` to its `started` event on NATS "
        f"(engine probed, connected, duplicate host id checked, subscribed, first "
        f"heartbeat sent); {config.starts} starts, one at a time.",
        f"Idle: {len(idle)} agents at once, each on its own engine with running "
        f"containers, default heartbeat interval (5 s) and NATS ping interval (2 s); "
        f"measured after {config.settle_seconds:.0f} s of settling, from /proc.",
        f"RSS floor with pydantic-settings, typer and protocol: an idle interpreter after "
        f"`{MANDATED_IMPORTS}`, the libraries the agent must use and its wire models; "
        f"the ratio is the agent's idle RSS over it.",
    ]
    return table
